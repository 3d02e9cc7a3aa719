"""Evaluates a trained run the way the papers do: per-case 3D metrics in the source geometry.

For every case of the split, the model predicts all slices, the recipe's inverse puts the lesion
probabilities back into the original voxel grid (undoing resize, crop and transpose), the mask is
made with the run's post-processing (inference/postprocess.py; threshold 0.5 alone without a
choice or with post=False), and compared with the original NIfTI mask(s) in the source voxel
spacing (metrics.py).

`evaluate_run` writes `{workdir}/eval/{name}/` (`eval_name`: the split, plus `-tta`,
`-{checkpoint}` for a checkpoint other than 'best' and `-raw` without post-processing, so a
variant never replaces the main result): cases.csv, summary.json (with a 'run' entry saying what
was evaluated), summary.md, dsc_boxplot.png and predictions/{case}.nii.gz. Everything goes to a
hidden temporary folder first and is renamed into place at the end.
"""

import pathlib
import shutil
import tempfile

import jax
import ml_collections
import numpy as np

from agmr_jax import checkpointing
from agmr_jax import data
from agmr_jax import progress
from agmr_jax import runs
from agmr_jax.inference import loading
from agmr_jax.evaluation import metrics
from agmr_jax.evaluation import report
from agmr_jax.inference import postprocess
from input_pipeline import layouts
from input_pipeline import nifti
from input_pipeline import pipeline
from input_pipeline import recipes
from input_pipeline.errors import DataError


def open_splits(config: ml_collections.ConfigDict,
                workdir=None) -> tuple[pipeline.SliceDataset, dict]:
  """The run's records (built if missing) and its folds: {'train', 'validation'?, 'test'}; with
  `workdir`, warns when they are not the records the run was trained on."""
  dataset = data.prepare_data(config)
  if workdir is not None:
    data.check_same_records(workdir, dataset)
  val_fold = config.data.val_fold if config.data.val_fold >= 0 else None
  return dataset, dataset.split_folds(config.data.test_fold, val_fold)


def load_truth(case_id: str, case_meta: dict) -> tuple[np.ndarray, nifti.Geometry]:
  """The union of a case's original mask files, checked against the grid of its first image."""
  first = next(iter(case_meta['images']))
  case = layouts.Case(case_id, {first: pathlib.Path(case_meta['images'][first])},
                      tuple(pathlib.Path(p) for p in case_meta['masks']),
                      pathlib.Path(case_meta['images'][first]).parent)
  if not case.masks:
    raise DataError(case.root, f'case {case_id} has no lesion mask to evaluate against')
  _, mask, geometry = nifti.load_case(case)
  return mask > 0, geometry


def source_volumes(predictor, variables, dataset, folds):
  """Yields (case_id, probabilities, truth, geometry) per case, all in the source geometry."""
  recipe = data.recipe_of(dataset)
  for case in pipeline.iter_cases(dataset, folds):
    probs = recipe.inverse(predictor(variables, case.images),
                           recipes.SliceGeometry.from_array(case.geometry))
    truth, geometry = load_truth(case.case_id, dataset.meta['cases'][case.case_id])
    if truth.shape != probs.shape:
      raise DataError(dataset.meta['cases'][case.case_id]['masks'][0],
                      f'mask shape {truth.shape} differs from the records\' volume {probs.shape}')
    yield case.case_id, probs, truth, geometry


def evaluate_cases(predictor, variables, dataset, folds, *, out_dir: pathlib.Path | None,
                   post: postprocess.PostProcess = postprocess.PostProcess()) -> list[dict]:
  """Per-case metrics in the source geometry; writes predictions when out_dir is given."""
  rows = []
  bar = progress.Cases(len(dataset.case_ids(folds)), 'evaluate')
  for case_id, probs, truth, geometry in source_volumes(predictor, variables, dataset, folds):
    pred = post(probs, geometry.spacing)
    row = {'case_id': case_id, **metrics.case_metrics(pred, truth, geometry.spacing)}
    rows.append(row)
    if out_dir is not None and jax.process_index() == 0:
      nifti.save_mask(out_dir / 'predictions' / f'{case_id}.nii.gz', pred.astype(np.uint8),
                      geometry)
    bar.step(case_id, f"DSC {row['dsc']:.4f} ({row['n_truth']} true, {row['n_pred']} "
             'predicted voxels)')
  return rows


def eval_name(split: str, checkpoint='best', tta=False, post: bool = True) -> str:
  """Folder name under eval/: 'test', 'test-tta' (left-right flips), 'test-tta-lr-ap',
  'test-latest', 'test-tta-1200', 'test-raw' (without the run's post-processing)..."""
  axes = ('lr',) if tta is True else tuple(tta or ())
  flips = '' if not axes else '-tta' if axes == ('lr',) else '-tta-' + '-'.join(axes)
  return (split + flips + ('' if checkpoint == 'best' else f'-{checkpoint}')
          + ('' if post else '-raw'))


def evaluate_run(workdir, config=None, *, split: str = 'test', checkpoint: str = 'best',
                 write_predictions: bool = True, overwrite: bool = True,
                 tta=False, post: bool | postprocess.PostProcess = True) -> dict:
  """Evaluates `split` of a run; returns {'summary', 'rows', 'step', 'out_dir'}.

  With `post` True, the masks get the post-processing chosen on validation (postprocess.json,
  written by training); False, or a run without a choice, the plain 0.5 threshold; a
  PostProcess, that one (training passes its choice directly: no process reads the file before
  process 0 has written it).
  """
  workdir = pathlib.Path(workdir)
  config = config or runs.load_config(workdir)
  checkpoint = checkpointing.parse_checkpoint(checkpoint)
  final_dir = runs.eval_dir(workdir, eval_name(split, checkpoint, tta, post is not False))
  if isinstance(post, postprocess.PostProcess):
    chosen = post
  else:
    chosen = postprocess.load(workdir) if post else postprocess.PostProcess()
  if final_dir.exists() and not overwrite:
    raise FileExistsError(f'{final_dir}: exists; pass --overwrite to replace it')
  dataset, folds = open_splits(config, workdir)
  if split not in folds:
    raise ValueError(f'split {split!r} is not one of {sorted(folds)}')
  predictor, variables, step = loading.load_predictor(workdir, config, data.recipe_of(dataset),
                                                      checkpoint=checkpoint, tta=tta)
  final_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{final_dir.name}-', dir=final_dir.parent))
  try:
    rows = evaluate_cases(predictor, variables, dataset, folds[split],
                          out_dir=tmp if write_predictions else None, post=chosen)
    run_info = dict(model=config.model, split=split, folds=folds[split], step=int(step),
                    checkpoint=str(checkpoint), tta=tta, threshold=chosen.threshold,
                    min_component_mm3=chosen.min_component_mm3, recipe=dataset.meta['recipe'],
                    records=data.records_identity(dataset)['name'])
    summary = report.write_report(rows, tmp, f'{config.model} {split} (step {step})', run_info)
    if jax.process_index() == 0:
      if final_dir.exists():
        shutil.rmtree(final_dir)
      tmp.rename(final_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  _print_result(rows, summary, split, step)
  return {'summary': summary, 'rows': rows, 'step': step, 'out_dir': final_dir}


def _print_result(rows, summary, split, step) -> None:
  print(report.table(rows, ['case_id', 'dsc', 'hd95', 'asd', 'lesion_f1', 'lesion_count_diff',
                            'volume_diff_ml', 'n_truth', 'n_pred']))
  for name, text in metrics.format_summary(summary).items():
    print(f'{name:>17}: {text}')
  print(f'{split}: mean per-case DSC '
        f'{metrics.format_mean_std(summary["dsc"]["mean"], summary["dsc"]["std"])}, global DSC '
        f'{summary["global_dsc"]:.3f} over {len(rows)} cases (step {step})')
