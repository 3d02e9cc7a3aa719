r"""Lesion masks for new scans with a trained run (the command: agmr-predict, agmr_jax/predict.py).

Input: one NIfTI file, or a folder of them. A run trained on several modalities needs a folder in
nnU-Net naming, `{case}_{XXXX}.nii.gz` with XXXX = 0000, 0001, ... in the run's modality order
(printed at start; e.g. an ISLES 2018 MDANet run takes 0000=CBF, 0001=CBV, 0002=MTT, 0003=Tmax).
A single-modality run takes one file per case, `{case}.nii.gz` or `{case}_0000.nii.gz`.

Each case goes through the run's recipe (normalisation, crop, resize, neighbour slices, rounded to
the records' storage dtype exactly as training saw it), is predicted slice by slice in batches
(`inference.Predictor`, optional left-right flip averaging), mapped back to the voxel grid by
`Recipe.inverse`, and turned into a mask by the run's post-processing (the threshold and minimum
lesion component volume chosen on validation after training, postprocess.py; threshold 0.5 when
the run has no choice; --threshold / --min_component_mm3 override it). Outputs, on the first
modality's grid (affine and header copied):

  OUT/{case}.nii.gz                 uint8 mask (0/1)
  OUT/probabilities/{case}.nii.gz   float32 lesion probability   (--save_probabilities)
  OUT/overlays/{case}.png           four axial slices, mask outlined in red   (--overlay)

Bad input stops everything before any output appears: the inputs are found and their headers
checked before the model is loaded, outputs go to a hidden staging folder inside OUT and are moved
into place only after every case succeeded, and an existing output is never replaced without
--overwrite. Each problem is one message naming the file; the exit status is 1.
"""

import gzip
import os
import pathlib
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence

from absl import logging
import nibabel as nib
import numpy as np

from agmr_jax import progress
from agmr_jax.inference import loading
from agmr_jax.inference import postprocess
from input_pipeline import layouts
from input_pipeline import nifti
from input_pipeline import recipes
from input_pipeline.errors import DataError

SUFFIXES = ('.nii.gz', '.nii')
NUM_OVERLAY_SLICES = 4
_CHANNEL = re.compile(r'^(?P<case>.+)_(?P<ch>\d{4})$')
_HEADER_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError,
                  nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError)


def _split_suffix(path: pathlib.Path) -> tuple[str, str] | None:
  for suffix in SUFFIXES:
    if path.name.endswith(suffix) and len(path.name) > len(suffix):
      return path.name[:-len(suffix)], suffix
  return None


def _nifti_files(folder: pathlib.Path) -> list[pathlib.Path]:
  files = [p for p in sorted(folder.iterdir()) if not p.name.startswith('.')]
  if not files:
    raise DataError(folder, 'input folder is empty')
  found = [p for p in files if p.is_file() and _split_suffix(p)]
  if not found:
    raise DataError(folder, 'no .nii.gz or .nii file in the input folder')
  for p in files:
    if p not in found:
      logging.warning('%s: not a NIfTI file, ignored', p)
  return found


def _single_modality_cases(files: Sequence[pathlib.Path], modality: str) -> list[layouts.Case]:
  """One case per file: `{case}.nii.gz`, or `{case}_0000.nii.gz` (any other channel is refused)."""
  by_id: dict[str, pathlib.Path] = {}
  for path in files:
    stem, _ = _split_suffix(path)
    m = _CHANNEL.match(stem)
    if m and m['ch'] != '0000':
      raise DataError(path, f'channel {m["ch"]} in the name, but the run takes one modality '
                      f'({modality}) as channel 0000 (rename the file if this is not a channel)')
    case_id = m['case'] if m else stem
    if case_id in by_id:
      raise DataError(path, f'case {case_id} is also given by {by_id[case_id].name}')
    by_id[case_id] = path
  return [layouts.Case(c, {modality: p}, (), p.parent)
          for c, p in sorted(by_id.items(), key=lambda kv: _natural_key(kv[0]))]


def _natural_key(text: str):
  """'case_2' before 'case_10', as the layout readers sort."""
  return [(0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', text)]


def find_cases(input_path, modalities: Sequence[str]) -> list[layouts.Case]:
  """The cases of a file or folder, their images keyed by the run's modality names in order.

  Raises:
    DataError: missing input, empty folder, bad names, missing channels or more channels than
      the run takes (naming the file or the folder).
  """
  path = pathlib.Path(input_path)
  modalities = tuple(modalities)
  if not path.exists():
    raise DataError(path, 'input does not exist')
  if path.is_file() and not _split_suffix(path):
    raise DataError(path, 'input must be a .nii.gz or .nii file, or a folder of them')
  files = [path] if path.is_file() else _nifti_files(path)
  if len(modalities) == 1:
    return _single_modality_cases(files, modalities[0])
  channels = ', '.join(f'{i:04d}={m}' for i, m in enumerate(modalities))
  if path.is_file():
    raise DataError(path, f'the run takes {len(modalities)} modalities; pass a folder of '
                    f'{{case}}_{{XXXX}}.nii.gz files with channels {channels}')
  endings = {_split_suffix(p)[1] for p in files}
  if len(endings) > 1:
    raise DataError(path, 'mixes .nii and .nii.gz files; use one kind')
  return layouts.read_nnunet_images(path, modalities, file_ending=endings.pop())


def check_headers(case: layouts.Case) -> None:
  """Cheap checks before any computation: readable header, 3D, one grid for all modalities."""
  first = None
  for path in case.images.values():
    try:
      img = nib.load(path)
    except _HEADER_ERRORS as e:
      raise DataError(path, f'unreadable NIfTI header ({type(e).__name__}: {e})') from e
    shape = list(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
      shape.pop()
    if len(shape) != 3:
      raise DataError(path, f'expected a 3D volume, got shape {tuple(img.shape)}')
    if first is None:
      first = (path, tuple(shape))
    elif tuple(shape) != first[1]:
      raise DataError(path, f'shape {tuple(shape)} differs from {first[1]} of {first[0].name}')


def plan_outputs(cases, out_dir: pathlib.Path, *, probabilities: bool, overlay: bool,
                 overwrite: bool) -> dict[str, dict[str, pathlib.Path]]:
  """{case_id: {kind: final path}}; refuses existing outputs (unless overwrite) and inputs."""
  if out_dir.exists() and not out_dir.is_dir():
    raise DataError(out_dir, 'output path exists and is not a folder')
  inputs = {p.resolve() for c in cases for p in c.images.values()}
  plan = {}
  for case in cases:
    outputs = {'mask': out_dir / f'{case.case_id}.nii.gz'}
    if probabilities:
      outputs['probabilities'] = out_dir / 'probabilities' / f'{case.case_id}.nii.gz'
    if overlay:
      outputs['overlay'] = out_dir / 'overlays' / f'{case.case_id}.png'
    for path in outputs.values():
      if path.resolve() in inputs:
        raise DataError(path, 'output would replace an input file; choose another output folder')
      if path.exists() and not overwrite:
        raise FileExistsError(f'{path}: exists; pass --overwrite to replace it')
    plan[case.case_id] = outputs
  return plan


class Staging:
  """Outputs written under OUT/.predict-*/ and moved into place by commit(); removed otherwise."""

  def __init__(self, out_dir: pathlib.Path, *, overwrite: bool):
    self.out_dir, self.overwrite = out_dir, overwrite
    self._created = not out_dir.exists()
    self._files: list[tuple[pathlib.Path, pathlib.Path]] = []

  def __enter__(self) -> 'Staging':
    self.out_dir.mkdir(parents=True, exist_ok=True)
    self.tmp = pathlib.Path(tempfile.mkdtemp(prefix='.predict-', dir=self.out_dir))
    return self

  def path(self, final: pathlib.Path) -> pathlib.Path:
    """Where to write what will become `final`."""
    staged = self.tmp / final.relative_to(self.out_dir)
    staged.parent.mkdir(parents=True, exist_ok=True)
    self._files.append((staged, final))
    return staged

  def commit(self) -> None:
    for staged, final in self._files:
      final.parent.mkdir(parents=True, exist_ok=True)
      if self.overwrite:
        os.replace(staged, final)
      else:
        os.link(staged, final)  # atomic and fails if the file appeared meanwhile

  def __exit__(self, exc_type, *exc):
    shutil.rmtree(self.tmp, ignore_errors=True)
    if exc_type is not None and self._created and not any(self.out_dir.iterdir()):
      self.out_dir.rmdir()


def predict_volume(predictor, variables, recipe: recipes.Recipe, image: np.ndarray) -> np.ndarray:
  """(C, X, Y, Z) image in the recipe's modality order -> (X, Y, Z) float32 lesion probability.

  The slices are rounded to the recipe's storage dtype, as the training and evaluation records
  were, so a case predicted from its NIfTI file gives exactly the evaluation's probabilities.
  """
  stack = recipe.forward(image)
  images = recipe.to_storage(stack.images).astype(np.float32)
  return recipe.inverse(predictor(variables, images), stack.geometry)


def write_overlay(path: pathlib.Path, image: np.ndarray, mask: np.ndarray, title: str) -> None:
  """A PNG of up to four axial slices (`vol[:, :, z].T`) with the mask outlined in red.

  Slices are spread over the predicted lesion's z-range, or over the volume if nothing was found.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lesion_z = np.flatnonzero(mask.any(axis=(0, 1)))
  z_lo, z_hi = ((lesion_z[0], lesion_z[-1]) if lesion_z.size
                else (mask.shape[2] // 5, mask.shape[2] - 1 - mask.shape[2] // 5))
  zs = sorted(set(np.linspace(z_lo, z_hi, NUM_OVERLAY_SLICES).round().astype(int)))
  lo, hi = np.percentile(image, [1, 99])
  fig, axes = plt.subplots(1, len(zs), figsize=(3 * len(zs), 3.3), squeeze=False)
  for ax, z in zip(axes[0], zs):
    ax.imshow(image[:, :, z].T, cmap='gray', vmin=lo, vmax=hi, origin='lower')
    if mask[:, :, z].any():
      ax.contour(mask[:, :, z].T, levels=[0.5], colors='red', linewidths=0.8, origin='lower')
    ax.set_title(f'z = {z}', fontsize=8)
    ax.axis('off')
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _predict_case(case, outputs, stage, model_parts, recipe, *, post) -> dict:
  predictor, variables = model_parts
  image, _, geometry = nifti.load_case(case)
  probs = predict_volume(predictor, variables, recipe, image)
  mask = post(probs, geometry.spacing).astype(np.uint8)
  nifti.save_mask(stage.path(outputs['mask']), mask, geometry)
  if 'probabilities' in outputs:
    nifti.save_mask(stage.path(outputs['probabilities']), probs, geometry, dtype=np.float32)
  n = int(mask.sum())
  volume_ml = n * float(np.prod(geometry.spacing)) / 1000.0
  if 'overlay' in outputs:
    write_overlay(stage.path(outputs['overlay']), image[0], mask,
                  f'{case.case_id}: {volume_ml:.2f} ml')
  return {'case_id': case.case_id, 'lesion_voxels': n, 'lesion_ml': volume_ml,
          'shape': geometry.shape, 'outputs': outputs}


def check_inputs(cases, *, skip_bad: bool = False):
  """(good cases, [(bad case, DataError)]): every file read in full and checked (nifti.load_case)
  before any network is loaded, so a bad file among hundreds fails in seconds, not hours."""
  good, bad = [], []
  for case in cases:
    try:
      check_headers(case)
      nifti.load_case(case)
    except DataError as e:
      if not skip_bad:
        raise
      bad.append((case, e))
      logging.warning('%s: skipped (%s)', case.case_id, e)
    else:
      good.append(case)
  if bad and not good:
    listing = '; '.join(str(e) for _, e in bad)
    raise DataError(bad[0][0].root, f'no good case to predict: {listing}')
  return good, bad


def predict(input_path, output_dir, workdir, *, checkpoint='best', save_probabilities=False,
            tta=False, overlay=False, overwrite=False, threshold: float | None = None,
            min_component_mm3: float | None = None, batch_size: int | None = None,
            skip_bad: bool = False) -> list[dict]:
  """Predicts every case of `input_path` into `output_dir` (see the module docstring).

  `workdir`: one run, a list of runs (an ensemble: their probabilities are averaged before the
  post-processing) or a cross-validation root (the ensemble of its folds). Every input is read
  and checked before a network is loaded; with `skip_bad` the good cases are predicted and the
  bad ones raised together afterwards (DataError), else the first bad one stops everything.
  """
  if batch_size is not None and batch_size <= 0:
    raise ValueError(f'batch_size must be a positive number of slices, got {batch_size}')
  output_dir = pathlib.Path(output_dir)
  workdirs = [workdir] if isinstance(workdir, (str, os.PathLike)) else list(workdir)
  members, configs, recipe = loading.resolve_members(workdirs)
  post, decided = postprocess.load_shared(members)
  post = postprocess.PostProcess(
      post.threshold if threshold is None else threshold,
      post.min_component_mm3 if min_component_mm3 is None else min_component_mm3)
  if threshold is not None or min_component_mm3 is not None:
    decided = 'as given on the command line'
  cases = find_cases(input_path, recipe.modalities)
  plan = plan_outputs(cases, output_dir, probabilities=save_probabilities, overlay=overlay,
                      overwrite=overwrite)
  cases, bad = check_inputs(cases, skip_bad=skip_bad)
  plan = {case.case_id: plan[case.case_id] for case in cases}
  what = (f'the run ({configs[0].model}' if len(members) == 1
          else f'the ensemble of {len(members)} runs ({", ".join(c.model for c in configs)}')
  print(f'{len(cases)} case(s); {what}, recipe {recipe.name}) takes channels '
        + ', '.join(f'{i:04d}={m}' for i, m in enumerate(recipe.modalities)))
  predictor, variables, steps = loading.load_ensemble(
      members, configs, recipe, checkpoint=checkpoint, tta=tta, batch_size=batch_size)
  results = []
  bar = progress.Cases(len(cases), 'predict')
  with Staging(output_dir, overwrite=overwrite) as stage:
    for case in cases:
      t0 = time.perf_counter()
      result = _predict_case(case, plan[case.case_id], stage, (predictor, variables), recipe,
                             post=post)
      result['seconds'] = time.perf_counter() - t0
      results.append(result)
      bar.step(case.case_id, f'{result["lesion_voxels"]} lesion voxels '
               f'({result["lesion_ml"]:.2f} ml), {result["seconds"]:.1f} s')
    stage.commit()
  if bad:
    listing = '; '.join(f'{case.case_id}: {error}' for case, error in bad)
    raise DataError(input_path, f'{len(bad)} bad case(s) skipped, {len(results)} predicted into '
                    f'{output_dir}: {listing}')
  print(f'wrote {len(results)} mask(s) to {output_dir} (checkpoint step(s) '
        f'{", ".join(map(str, steps))}; threshold {post.threshold}, components under '
        f'{post.min_component_mm3:g} mm3 removed: {decided})')
  return results
