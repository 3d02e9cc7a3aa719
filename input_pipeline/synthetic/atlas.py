"""Synthetic ATLAS R1.2: the MNI152 T1 with chronic lesions, written in the atlas_r12 layout."""

from __future__ import annotations

import pathlib

import numpy as np
from scipy import ndimage as ndi

from input_pipeline.synthetic import lesions as L
from input_pipeline.synthetic import resample
from input_pipeline.synthetic.common import case_record, save_volume, subject_rng

_ATLAS_SITE = 'Site1'
_ATLAS_LESION_COUNTS = (0.1, 0.5, 0.28, 0.12)  # P(0), P(1), P(2), P(3 lesions)


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
  matrix, offset = resample.grid_transform(affine, affine, L.random_rotation(rng, 3.0),
                                           rng.uniform(-3.0, 3.0, 3), L.box_centre_world())
  region = resample.output_region(*L.support_box(), matrix, offset, shape)
  image, labels = resample.sample([(image, 1), (L.label_volume(lesions), 0)], matrix, offset,
                                  shape, region)
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
  save_volume(folder / f'{subject}_t1w_deface_stx.nii.gz', case['T1'], case['affine'], 'int16', 4)
  masks = case['masks'] or [np.zeros(case['T1'].shape, np.uint8)]
  for k, mask in enumerate(masks):
    name = f'{subject}_LesionSmooth_stx' if k == 0 else f'{subject}_LesionSmooth_{k}_stx'
    save_volume(folder / f'{name}.nii.gz', mask, case['affine'], 'mask', 4)
  return case_record(subject, case['masks'])
