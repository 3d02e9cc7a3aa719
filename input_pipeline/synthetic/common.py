"""What every synthetic writer shares: the per-subject generator, NIfTI saving, the case record."""

from __future__ import annotations

import pathlib
import zlib

import nibabel as nib
import numpy as np


def subject_rng(layout: str, seed: int, index: int) -> np.random.Generator:
  """The generator of subject `index`: independent of the other subjects."""
  return np.random.default_rng(np.random.SeedSequence([seed, index, zlib.crc32(layout.encode())]))


def save_volume(path: pathlib.Path, data: np.ndarray, affine: np.ndarray, kind: str,
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


def case_record(case_id: str, masks: list[np.ndarray]) -> dict:
  """The case's entry in synthetic.json: id, lesion voxels in all, voxels per lesion mask."""
  union = np.zeros_like(masks[0]) if masks else None
  for m in masks:
    union |= m
  return {'id': case_id, 'lesion_voxels': int(union.sum()) if masks else 0,
          'lesions': [int(m.sum()) for m in masks]}
