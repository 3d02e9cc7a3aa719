"""One canonical orientation: every volume is read as RAS+ and every output written back.

A NIfTI stores its voxel axes in any order and direction (LPS, RAS, axes permuted, ...); the
affine says how they map to world millimetres. Slicing "axially along the last axis" is only
meaningful in one agreed orientation, so volumes are brought to the closest RAS+ axis order
(x: left -> right, y: posterior -> anterior, z: inferior -> superior; nibabel's
as_closest_canonical, MONAI's Orientation('RAS')) before any recipe sees them, and masks are
turned back to the input's own axes before they are written with its affine and header. A volume
stored RAS+ already is untouched (no copy, the same bytes).
"""

import nibabel as nib
import numpy as np

RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=np.float64)


def to_ras(data: np.ndarray, affine: np.ndarray):
  """(data in RAS+ axis order, its affine, the orientation applied or None when already RAS+)."""
  ornt = nib.orientations.io_orientation(affine)
  if np.array_equal(ornt, RAS):
    return data, affine, None
  ras = nib.orientations.apply_orientation(data, ornt)
  ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
  return np.ascontiguousarray(ras), ras_affine, ornt


def from_ras(data: np.ndarray, ornt) -> np.ndarray:
  """The inverse of `to_ras` for an array on the RAS+ grid (`ornt` as to_ras returned it)."""
  if ornt is None:
    return data
  back = nib.orientations.ornt_transform(RAS, ornt)
  return np.ascontiguousarray(nib.orientations.apply_orientation(data, back))


def permuted_spacing(spacing, ornt) -> tuple[float, ...]:
  """Voxel sizes in RAS+ axis order."""
  if ornt is None:
    return tuple(spacing)
  out = [0.0] * len(spacing)
  for axis, (target, _) in enumerate(ornt):
    out[int(target)] = float(spacing[axis])
  return tuple(out)
