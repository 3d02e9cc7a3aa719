"""Synthetic stroke datasets, written as NIfTI in the real datasets' on-disk layouts.

    ids = write_dataset('synthetic_atlas', 'data/raw/atlas', num_subjects=20, seed=0)

`SYNTHETIC = {name: (writer, layout)}`; the layout names the reader in input_pipeline.layouts.
Subject k is drawn from SeedSequence([seed, k, crc32(layout)]), so it does not depend on how
many subjects are written, and the same seed gives identical arrays.

  synthetic_atlas      atlas_r12  MNI152 T1 (197x233x189, 1 mm, MNI affine), int16, WM ~430-1300;
                                  0-3 chronic lesions (hypointense: grey-matter-like margin,
                                  CSF-like core; 0.2-150 cm3), one mask
                                  file per lesion (one all-zero file when there is none)
  synthetic_isles2018  isles2018  CT (int16 HU) + CBF, CBV, MTT, Tmax; 256x256x8..16 of
                                  (0.8-1.0)^2 x 5 mm, uncompressed .nii; mask = core
  synthetic_isles2022  isles2022  DWI, ADC, FLAIR (int16), 98x116x94 of 2 mm, .nii.gz;
                                  0-2 old-lesion mimics that are not in the mask
  synthetic_isles2017  isles2017  ADC (int16) + rCBF, rCBV, MTT, TTP, Tmax; 192x192x16..24 of
                                  1.2x1.2x6 mm, uncompressed .nii

Perfusion maps are stored as int16 with a NIfTI scale factor (read them with get_fdata).
Images are skull-stripped (zero outside the brain) except CT. Masks are uint8 {0, 1}.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import tempfile
import zlib

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from input_pipeline import synthetic_lesions as L
from input_pipeline import synthetic_tiny

_ATLAS_SITE = 'Site1'
_ATLAS_LESION_COUNTS = (0.1, 0.5, 0.28, 0.12)  # P(0), P(1), P(2), P(3 lesions)


def subject_rng(layout: str, seed: int, index: int) -> np.random.Generator:
  """The generator of subject `index`: independent of the other subjects."""
  return np.random.default_rng(np.random.SeedSequence([seed, index, zlib.crc32(layout.encode())]))


def _save(path: pathlib.Path, data: np.ndarray, affine: np.ndarray, kind: str,
          space_code: int = 1) -> None:
  """Writes a volume. kind: 'mask' (uint8), 'int16' (rounded), or 'scaled' (int16 + scale)."""
  if kind == 'mask':
    data, dtype = data.astype(np.uint8), np.uint8
  elif kind == 'int16':
    data, dtype = np.clip(np.round(data), -32768, 32767).astype(np.int16), np.int16
  elif kind == 'scaled':
    data, dtype = np.asarray(data, np.float32), np.int16
  else:
    raise ValueError(f'unknown kind {kind!r}')
  if not np.all(np.isfinite(data)):
    raise ValueError(f'{path}: non-finite values')  # a generator bug, never bad input data
  img = nib.Nifti1Image(data, affine)
  img.set_data_dtype(dtype)
  img.set_qform(affine, code=space_code)
  img.set_sform(affine, code=space_code)
  img.header.set_xyzt_units('mm', 'sec')
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(img, str(path))


def _record(case_id: str, masks: list[np.ndarray]) -> dict:
  union = np.zeros_like(masks[0]) if masks else None
  for m in masks:
    union |= m
  return {'id': case_id, 'lesion_voxels': int(union.sum()) if masks else 0,
          'lesions': [int(m.sum()) for m in masks]}


# ----------------------------------------------------------------------------- ATLAS R1.2

def atlas_subject(rng: np.random.Generator) -> dict:
  """One ATLAS-like subject: {'T1' (float32, saved rounded to int16), 'masks' (uint8, one per
  lesion), 'brain' (the jittered brain mask, bool), 'affine' (MNI)}.

  Chronic lesions darken tissue by a factor 1 - c with soft edges and texture. c rises from a
  gliotic rim (c ~ U(0.2, 0.45) per subject, +-0.05 per lesion: grey-matter-like) to a cavitated
  core (c ~ U(0.55, 0.75) per lesion: CSF-like). The rim has a thickness in millimetres,
  U(1, 3) mm but at most a third of the lesion's largest depth, and the core follows over a
  1.5 mm ramp (_core_map); so a lacune is a CSF-like cavity with a thin grey rim, as on T1, and
  the rim of a large infarct is a band a few millimetres wide. Margins overlap grey matter and
  cores overlap CSF in intensity, and no intensity threshold segments a lesion. (Version 1 drew
  one c ~ U(0.25, 0.7) per subject for the whole lesion, so a 100 ml infarct could be uniformly
  grey-matter-like; version 2 made the rim a fraction U(0.2, 0.5) of the largest depth, so a
  1 ml lesion was mostly rim and a 100 ml one had a rim up to a centimetre wide.) Then a
  rigid jitter (<= 3 deg, <= 3 mm), a bias field (~15%), a global scale (WM ~ 430-1300) and
  Rician noise (1.5-5% of WM) inside the brain; exactly zero outside it (skull-stripped).
  """
  maps = L.mni_maps()
  shape, affine = maps['t1'].shape, maps['affine']
  num = int(rng.choice(len(_ATLAS_LESION_COUNTS), p=_ATLAS_LESION_COUNTS))
  lesions = [L.place_lesion(rng, L.sample_volume_mm3(rng, 0.2, 150.0)) for _ in range(num)]
  image = np.array(maps['t1'])
  margin = rng.uniform(0.2, 0.45)
  for les in lesions:
    rim = np.clip(margin + rng.normal(0.0, 0.05), 0.15, 0.5)
    core = rng.uniform(0.55, 0.75)
    c = rim + (core - rim) * _core_map(les.mask, rng.uniform(1.0, 3.0))
    texture = L.smooth_noise(rng, les.mask.shape, corr_vox=3.0)
    image[les.box] *= 1.0 - np.clip(c * les.soft * (1.0 + 0.2 * texture), 0.0, 0.95)
  matrix, offset = L.grid_transform(affine, affine, L.random_rotation(rng, 3.0),
                                    rng.uniform(-3.0, 3.0, 3), L.box_centre_world())
  region = L.output_region(*L.support_box(), matrix, offset, shape)
  image, labels = L.sample([(image, 1), (L.label_volume(lesions), 0)], matrix, offset, shape,
                           region)
  scale = rng.uniform(500.0, 1500.0)
  box = tuple(slice(a, b) for a, b in zip(*region))  # all of the brain lies in here
  signal = image[box] * L.bias_field(rng, shape, 0.15, region) * np.float32(scale)
  support = image[box] > 0.01
  t1 = np.zeros(shape, np.float32)
  t1[box][support] = L.rician(rng, signal[support], rng.uniform(0.015, 0.05) * 0.86 * scale)
  masks = [((labels >> k) & 1).astype(np.uint8) for k in range(num)]
  return {'T1': t1, 'masks': masks, 'brain': (labels & L.BRAIN_BIT) > 0, 'affine': affine}


def _core_map(mask: np.ndarray, rim_vox: float, ramp_vox: float = 1.5,
              max_rim_fraction: float = 1 / 3) -> np.ndarray:
  """0 on a lesion's rim rising to 1 in its core: the voxels whose depth inside the mask
  (Euclidean distance to the outside) exceeds `rim_vox`, capped at `max_rim_fraction` of the
  largest depth so that small lesions keep a core, over `ramp_vox` voxels."""
  depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
  start = min(rim_vox, max_rim_fraction * float(depth.max(initial=0.0)))
  return np.clip((depth - start) / ramp_vox, 0.0, 1.0).astype(np.float32)


def write_atlas_case(root: pathlib.Path, index: int, seed: int) -> dict:
  """{root}/Site1/{subject}/t01/{subject}_t1w_deface_stx.nii.gz + _LesionSmooth[_k]_stx masks."""
  subject = f'{31000 + index:06d}'
  case = atlas_subject(subject_rng('atlas_r12', seed, index))
  folder = root / _ATLAS_SITE / subject / 't01'
  _save(folder / f'{subject}_t1w_deface_stx.nii.gz', case['T1'], case['affine'], 'int16', 4)
  masks = case['masks'] or [np.zeros(case['T1'].shape, np.uint8)]
  for k, mask in enumerate(masks):
    name = f'{subject}_LesionSmooth_stx' if k == 0 else f'{subject}_LesionSmooth_{k}_stx'
    _save(folder / f'{name}.nii.gz', mask, case['affine'], 'mask', 4)
  return _record(subject, case['masks'])


# ----------------------------------------------------------------------------- ISLES

def _smooth_noise_factor(rng: np.random.Generator, shape, amount: float) -> np.ndarray:
  """1 + amount * (in-plane smoothed unit gaussian noise): the grain of perfusion maps."""
  noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (1.0, 1.0, 0.0))
  return 1.0 + np.float32(amount) * noise / noise.std()


def _perfusion(rng: np.random.Generator, s: dict, spacing, grain: float) -> dict:
  """CBF (ml/100g/min), CBV (ml/100g), MTT (s), Tmax (s) of a scene, zero outside the brain.

  The hypoperfused region (Tmax up by 5-12 s) is the lesion plus a penumbra 3-8 mm wider. In
  the lesion CBF drops by 55-90% and CBV by 30-70% of that, so MTT = 60 CBV / CBF rises; in the
  penumbra CBF drops by 15-45% and CBV rises by up to 15%.
  """
  g, w, c, core, brain = s['gm'], s['wm'], s['csf'], s['soft'], s['brain']
  sigma = rng.uniform(3.0, 8.0) / np.asarray(spacing)
  blur = ndi.gaussian_filter(s['mask'].astype(np.float32), sigma)
  pen = np.maximum(np.clip(3.0 * blur, 0.0, 1.0), core)
  outer = pen - core
  drop = rng.uniform(0.55, 0.9)  # CBV drops by a fraction of the CBF drop: MTT rises in the core
  cbf = ((55 * g + 22 * w + 3 * c) * rng.uniform(0.8, 1.25) * (1 - drop * core)
         * (1 - rng.uniform(0.15, 0.45) * outer) * _smooth_noise_factor(rng, g.shape, grain))
  cbv = ((4.5 * g + 2.3 * w + 0.6 * c) * rng.uniform(0.8, 1.25)
         * (1 - rng.uniform(0.3, 0.7) * drop * core) * (1 + 0.15 * outer)
         * _smooth_noise_factor(rng, g.shape, grain))
  cbf, cbv = np.maximum(cbf, 0.0), np.maximum(cbv, 0.0)
  mtt = np.clip(60.0 * cbv / np.maximum(cbf, 1.0), 0.0, 30.0)
  tmax = (0.3 + 1.2 * w + 1.5 * c) * _smooth_noise_factor(rng, g.shape, 2 * grain)
  tmax = np.clip(tmax + rng.uniform(5.0, 12.0) * pen, 0.0, 40.0)
  return {k: (v * brain).astype(np.float32) for k, v in
          (('CBF', cbf), ('CBV', cbv), ('MTT', mtt), ('Tmax', tmax))}


def isles2018_subject(rng: np.random.Generator) -> dict:
  """CT perfusion: 256x256 x 8-16 slices of ~0.9 x 0.9 x 5 mm; CT in HU with skull (brain
  20-45, CSF ~6, infarct 2-8 HU darker), perfusion maps as in _perfusion; mask = core."""
  xy = round(rng.uniform(0.8, 1.0), 3)
  shape, spacing = (256, 256, int(rng.integers(8, 17))), (xy, xy, 5.0)
  s = L.scene(rng, shape, spacing, volume_ml=(0.5, 120.0), num_lesions=int(rng.integers(1, 3)),
              lesion_slab=True, thick=True, head=True)
  g, w, c = s['gm'], s['wm'], s['csf']
  soft_tissue = np.clip(s['head'] - s['bone'] - g - w - c, 0.0, 1.0)
  ct = (-1000.0 * (1.0 - s['head']) + rng.uniform(700.0, 1400.0) * s['bone'] + 38 * g + 28 * w
        + 6 * c + 30 * soft_tissue - rng.uniform(2.0, 8.0) * s['soft'] * (g + w))
  ct = ct + rng.uniform(2.0, 5.0) * rng.standard_normal(shape, dtype=np.float32)
  return {'CT': ct.astype(np.float32), **_perfusion(rng, s, spacing, 0.12), 'mask': s['mask'],
          'brain': s['brain'], 'affine': s['affine']}


def isles2017_subject(rng: np.random.Generator) -> dict:
  """MR perfusion + ADC: 192x192 x 16-24 slices of 1.2 x 1.2 x 6 mm. ADC in 1e-6 mm2/s (GM ~780,
  WM ~700, CSF ~3000, lesion 15-50% lower), rCBF/rCBV/MTT/Tmax as in _perfusion, TTP (s)."""
  shape, spacing = (192, 192, int(rng.integers(16, 25))), (1.2, 1.2, 6.0)
  s = L.scene(rng, shape, spacing, volume_ml=(1.0, 200.0), num_lesions=int(rng.integers(1, 3)),
              lesion_slab=True, thick=True)
  g, w, c = s['gm'], s['wm'], s['csf']
  adc = ((780 * g + 700 * w + 3000 * c) * rng.uniform(0.9, 1.1)
         * (1 - rng.uniform(0.15, 0.5) * s['soft']))
  adc = np.maximum(adc + rng.uniform(30.0, 60.0) * rng.standard_normal(shape, dtype=np.float32), 0)
  perf = _perfusion(rng, s, spacing, 0.2)
  ttp = rng.uniform(15.0, 30.0) + 0.8 * perf['Tmax'] + 2.0 * w
  ttp = ttp * _smooth_noise_factor(rng, shape, 0.05)
  return {'ADC': (adc * s['brain']).astype(np.float32), 'rCBF': perf['CBF'], 'rCBV': perf['CBV'],
          'MTT': perf['MTT'], 'Tmax': perf['Tmax'], 'TTP': (ttp * s['brain']).astype(np.float32),
          'mask': s['mask'], 'brain': s['brain'], 'affine': s['affine']}


def isles2022_subject(rng: np.random.Generator) -> dict:
  """DWI/ADC/FLAIR on 98x116x94 of 2 mm. Acute lesions: DWI x(1.8-3.5), ADC -30-55%, FLAIR
  +0-35%. 0-2 old-lesion mimics (not in the mask): FLAIR bright, DWI slightly bright, ADC up."""
  shape = (98, 116, 94)
  num = int(rng.choice(4, p=(0.5, 0.25, 0.15, 0.1))) + 1
  s = L.scene(rng, shape, (2.0, 2.0, 2.0), volume_ml=(0.1, 80.0), num_lesions=num,
              num_mimics=int(rng.integers(0, 3)))
  g, w, c, les, mim, brain = s['gm'], s['wm'], s['csf'], s['soft'], s['mimic'], s['brain']

  def magnitude(tissue, gain, mimic_gain, scale):
    signal = tissue * (1 + gain * les) * (1 + mimic_gain * mim) * L.bias_field(rng, shape, 0.1)
    out = np.zeros(shape, np.float32)
    out[brain] = L.rician(rng, (signal * scale)[brain], rng.uniform(0.02, 0.05) * scale)
    return out

  dwi = magnitude(1.0 * g + 0.85 * w + 0.25 * c, rng.uniform(0.8, 2.5), rng.uniform(0.1, 0.3),
                  rng.uniform(300.0, 900.0))
  adc = ((800 * g + 720 * w + 3000 * c) * (1 - rng.uniform(0.3, 0.55) * les)
         * (1 + rng.uniform(0.2, 0.5) * mim))
  adc = np.maximum(adc + rng.uniform(30.0, 60.0) * rng.standard_normal(shape, dtype=np.float32), 0)
  flair = magnitude(1.0 * g + 0.8 * w + 0.15 * c, rng.uniform(0.0, 0.35), rng.uniform(0.4, 0.8),
                    rng.uniform(200.0, 800.0))
  return {'DWI': dwi, 'ADC': (adc * brain).astype(np.float32), 'FLAIR': flair, 'mask': s['mask'],
          'brain': brain, 'affine': s['affine']}


def _write_smir(case_dir: pathlib.Path, base_id: int, series: dict, mask: np.ndarray,
                affine: np.ndarray, int16: tuple[str, ...]) -> None:
  """SMIR.Brain.XX.O.{series}.{id}/SMIR.Brain.XX.O.{series}.{id}.nii per series, then OT."""
  items = list(series.items()) + [('OT', mask)]
  for k, (tag, data) in enumerate(items):
    name = f'SMIR.Brain.XX.O.{tag}.{base_id + k}'
    kind = 'mask' if tag == 'OT' else ('int16' if tag in int16 else 'scaled')
    _save(case_dir / name / f'{name}.nii', data, affine, kind)


def write_isles2018_case(root: pathlib.Path, index: int, seed: int) -> dict:
  """{root}/case_{n}/SMIR.Brain.XX.O.{CT,CT_CBF,CT_CBV,CT_MTT,CT_Tmax,OT}.{id}/...nii."""
  case_id = f'case_{index + 1}'
  case = isles2018_subject(subject_rng('isles2018', seed, index))
  series = {'CT': case['CT'], **{f'CT_{m}': case[m] for m in ('CBF', 'CBV', 'MTT', 'Tmax')}}
  _write_smir(root / case_id, 345000 + 10 * index, series, case['mask'], case['affine'], ('CT',))
  return _record(case_id, [case['mask']])


def write_isles2017_case(root: pathlib.Path, index: int, seed: int) -> dict:
  """{root}/training_{n}/SMIR.Brain.XX.O.MR_{mod}.{id}/...nii and SMIR.Brain.XX.O.OT.{id}."""
  case_id = f'training_{index + 1}'
  case = isles2017_subject(subject_rng('isles2017', seed, index))
  series = {f'MR_{m}': case[m] for m in ('ADC', 'MTT', 'rCBF', 'rCBV', 'Tmax', 'TTP')}
  _write_smir(root / case_id, 188000 + 10 * index, series, case['mask'], case['affine'],
              ('MR_ADC',))
  return _record(case_id, [case['mask']])


def write_isles2022_case(root: pathlib.Path, index: int, seed: int) -> dict:
  """BIDS: sub-strokecase{NNNN}/ses-0001/{dwi,anat}/..., mask under derivatives/."""
  sub = f'sub-strokecase{index + 1:04d}'
  stem = f'{sub}_ses-0001'
  case = isles2022_subject(subject_rng('isles2022', seed, index))
  ses = root / sub / 'ses-0001'
  for folder, suffix, key in (('dwi', 'dwi', 'DWI'), ('dwi', 'adc', 'ADC'),
                              ('anat', 'FLAIR', 'FLAIR')):
    _save(ses / folder / f'{stem}_{suffix}.nii.gz', case[key], case['affine'], 'int16')
  _save(root / 'derivatives' / sub / 'ses-0001' / f'{stem}_msk.nii.gz', case['mask'],
        case['affine'], 'mask')
  return _record(sub, [case['mask']])


def _bids_description(root: pathlib.Path) -> None:
  desc = {'Name': 'ISLES 2022 (synthetic)', 'BIDSVersion': '1.7.0', 'DatasetType': 'raw'}
  (root / 'dataset_description.json').write_text(json.dumps(desc, indent=2) + '\n')


SYNTHETIC = {
    'synthetic_atlas': (write_atlas_case, 'atlas_r12'),
    'synthetic_isles2018': (write_isles2018_case, 'isles2018'),
    'synthetic_isles2022': (write_isles2022_case, 'isles2022'),
    'synthetic_isles2017': (write_isles2017_case, 'isles2017'),
    # Tiny volumes for tests and smoke runs (synthetic_tiny.py).
    **{name: (synthetic_tiny.make_writer(name), 'nnunet') for name in synthetic_tiny.TINY_MODALITIES},
}
_ROOT_FILES = {'isles2022': _bids_description}
# Generator versions: a change to what a dataset's subjects look like bumps its version, which
# goes into the folder name (`tag`), so trees written by an older generator are never reused.
VERSIONS = {'synthetic_atlas': 3}


def tag(name: str, num_subjects: int, seed: int) -> str:
  """Folder (and records) name of a written dataset: 'synthetic_atlas-v3-n60-seed0'."""
  version = VERSIONS.get(name, 1)
  return f'{name}{f"-v{version}" if version > 1 else ""}-n{num_subjects}-seed{seed}'


def write_dataset(name: str, root: str | os.PathLike, num_subjects: int,
                  seed: int = 0) -> list[str]:
  """Writes synthetic dataset `name` with `num_subjects` subjects into the new folder `root`.

  The tree is built in a hidden sibling folder and moved into place at the end, so `root` is
  either complete or absent. Returns the case ids (the case folder names, in order).

  Raises:
    ValueError: unknown name, num_subjects < 1 or a negative seed.
    FileExistsError: `root` exists and is not an empty folder (nothing is ever overwritten).
  """
  if name not in SYNTHETIC:
    raise ValueError(f'unknown synthetic dataset {name!r}; known: {", ".join(sorted(SYNTHETIC))}')
  if int(num_subjects) != num_subjects or num_subjects < 1:
    raise ValueError(f'num_subjects must be a positive integer, got {num_subjects!r}')
  if int(seed) != seed or seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
  writer, layout = SYNTHETIC[name]
  root = pathlib.Path(root)
  _refuse_existing(root)
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
  try:
    os.chmod(tmp, 0o755)
    records = [writer(tmp, k, int(seed)) for k in range(int(num_subjects))]
    if layout in _ROOT_FILES:
      _ROOT_FILES[layout](tmp)
    meta = {'name': name, 'layout': layout, 'version': VERSIONS.get(name, 1), 'seed': int(seed),
            'num_subjects': int(num_subjects),
            'cases': records}
    (tmp / 'synthetic.json').write_text(json.dumps(meta, indent=1) + '\n')
    _refuse_existing(root)
    try:
      os.replace(tmp, root)  # an empty folder at root is replaced; a non-empty one fails
    except OSError as e:
      if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        raise FileExistsError(e.errno, 'refusing to overwrite', str(root)) from e
      raise
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return [r['id'] for r in records]


def _refuse_existing(root: pathlib.Path) -> None:
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise FileExistsError(errno.EEXIST, 'refusing to overwrite a non-empty path', str(root))
