"""Validated NIfTI reading and atomic mask writing.

Every problem with an input file is reported as `DataError(path, problem)`, so a
bad volume in a dataset of hundreds names itself instead of failing deep inside
a recipe. Arrays follow docs/conventions.md: float32 `[x, y, z]` volumes,
`(C, X, Y, Z)` multi-modal stacks, uint8 {0, 1} masks.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import os
import pathlib
import tempfile
import zlib
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from input_pipeline import orientation
from input_pipeline.errors import DataError

# Tolerance on affine entries (mm) when checking that modalities share a grid.
AFFINE_ATOL = 1e-3
KINDS = ('image', 'mask')

# What nibabel raises for missing headers, truncated gzip streams, short
# uncompressed files and corrupt headers; each becomes a DataError.
_READ_ERRORS = (
    OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError,
    nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError,
)


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
  """One validated 3D volume, in RAS+ axis order (orientation.py).

  Attributes:
    data: float32 array indexed [x, y, z], RAS+.
    affine: (4, 4) voxel-to-world (mm) transform of `data`.
    spacing: voxel size (sx, sy, sz) in mm of `data`'s axes, from the header zooms.
    header: the file's nibabel header (already reduced to 3D), in the file's own axis order.
    ornt: the reorientation applied to the file's axes (None: the file was RAS+ already).
    source_affine: the file's own affine, which outputs are written with.
  """
  data: np.ndarray
  affine: np.ndarray
  spacing: tuple[float, float, float]
  header: Any
  ornt: Any = None
  source_affine: np.ndarray | None = None

  @property
  def shape(self) -> tuple[int, int, int]:
    return tuple(self.data.shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Geometry:
  """The grid of a case (from its first modality), RAS+, enough to write outputs back on the
  file's own grid (Volume's fields)."""
  shape: tuple[int, int, int]
  affine: np.ndarray
  spacing: tuple[float, float, float]
  header: Any
  ornt: Any = None
  source_affine: np.ndarray | None = None

  @classmethod
  def of(cls, volume: Volume) -> 'Geometry':
    return cls(volume.shape, volume.affine, volume.spacing, volume.header, volume.ornt,
               volume.source_affine)


def _spatial_shape(path: pathlib.Path, shape: tuple[int, ...]) -> tuple[int, ...]:
  """Returns the 3D shape, dropping trailing singleton axes (e.g. (X, Y, Z, 1))."""
  dims = list(shape)
  while len(dims) > 3 and dims[-1] == 1:
    dims.pop()
  if len(dims) != 3:
    raise DataError(path, f'expected a 3D volume, got {len(shape)}D shape {tuple(shape)}')
  if min(dims) < 1:
    raise DataError(path, f'volume has an empty axis: shape {tuple(shape)}')
  return tuple(int(d) for d in dims)


def _check_mask_values(path: pathlib.Path, data: np.ndarray) -> None:
  values = np.unique(data)
  bad = values[(values != 0) & (values != 1)]
  if bad.size:
    shown = ', '.join(f'{v:g}' for v in bad[:10]) + (', ...' if bad.size > 10 else '')
    raise DataError(path, f'mask values must be 0 or 1; found {bad.size} other value(s): {shown}')


def load_volume(path: str | os.PathLike, *, kind: str = 'image') -> Volume:
  """Loads and validates one NIfTI volume.

  Args:
    path: a .nii or .nii.gz file.
    kind: 'image', or 'mask' to also require values in {0, 1} (float masks
      holding exactly 0.0 / 1.0 are accepted).

  Returns:
    The volume, float32 [x, y, z]; a 4D file with a trailing singleton axis is squeezed.

  Raises:
    DataError: missing, unreadable or truncated file, not 3D, NaN/Inf voxels,
      non-positive spacing, or (masks) values outside {0, 1}.
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(path, 'file not found')
  if not path.is_file():
    raise DataError(path, 'not a regular file (expected a .nii or .nii.gz volume)')
  try:
    img = nib.load(path, mmap=False)
    shape = _spatial_shape(path, img.shape)
    # nibabel reads lazily: a truncated .nii.gz only fails here.
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
  except DataError:
    raise
  except _READ_ERRORS as e:
    detail = ' '.join(str(e).split())
    raise DataError(path, f'unreadable or corrupt NIfTI file ({type(e).__name__}: {detail})') from e
  bad = ~np.isfinite(data)
  if bad.any():
    n_nan = int(np.isnan(data).sum())
    raise DataError(path, f'{int(bad.sum())} non-finite voxel(s) ({n_nan} NaN, '
                    f'{int(bad.sum()) - n_nan} Inf) out of {data.size}')
  header = img.header.copy()
  header.set_data_shape(shape)
  raw = _raw_pixdim(path)
  if raw is not None and not np.all(np.isfinite(raw) & (raw > 0)):
    raise DataError(path, f'invalid voxel spacing (pixdim[1:4] = {tuple(float(s) for s in raw)}); '
                    'every spacing must be positive and finite')
  spacing = tuple(float(z) for z in header.get_zooms()[:3])
  if not all(np.isfinite(s) and s > 0 for s in spacing):
    raise DataError(path, f'invalid voxel spacing {spacing} (must be positive)')
  if kind == 'mask':
    _check_mask_values(path, data)
  source_affine = np.array(img.affine, dtype=np.float64)
  data, affine, ornt = orientation.to_ras(data, source_affine)
  return Volume(data=data, affine=affine, spacing=orientation.permuted_spacing(spacing, ornt),
                header=header, ornt=ornt, source_affine=source_affine)


def _raw_pixdim(path: pathlib.Path) -> np.ndarray | None:
  """pixdim[1:4] as stored (nibabel replaces zero or negative values when it loads a header)."""
  try:
    with nib.openers.ImageOpener(path) as f:
      block = f.read(540)
  except _READ_ERRORS:
    return None
  for klass in (nib.Nifti1Header, nib.Nifti2Header):
    if klass.may_contain_header(block):
      return np.asarray(klass(block[:klass.template_dtype.itemsize], check=False)['pixdim'][1:4],
                        np.float64)
  return None


def check_same_grid(path: pathlib.Path, vol: Volume, ref_path: pathlib.Path,
                     ref: Volume) -> None:
  if vol.shape != ref.shape:
    raise DataError(path, f'shape {vol.shape} does not match shape {ref.shape} '
                    f'of {ref_path.name}')
  diff = float(np.max(np.abs(vol.affine - ref.affine)))
  if not diff <= AFFINE_ATOL:
    raise DataError(path, f'affine differs from that of {ref_path.name} by up to '
                    f'{diff:.4g} mm (tolerance {AFFINE_ATOL} mm)')


def _modality_path(case, name: str) -> pathlib.Path:
  """case.images[name], falling back to a case-insensitive match ('FLAIR' finds 'Flair')."""
  if name in case.images:
    return pathlib.Path(case.images[name])
  matches = [k for k in case.images if k.lower() == name.lower()]
  if len(matches) == 1:
    return pathlib.Path(case.images[matches[0]])
  raise DataError(case.root, f'case {case.case_id} has no modality {name!r} '
                  f'(has: {", ".join(case.images) or "none"})')


def load_case(case, modalities: Sequence[str] | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
  """Loads all (or the named) modalities and the united mask of a layouts.Case.

  Args:
    case: a `input_pipeline.layouts.Case`.
    modalities: modality names to load, in this order (matched exactly, else
      case-insensitively); None = all, in the layout's canonical order.

  Returns:
    (image (C, X, Y, Z) float32, mask (X, Y, Z) uint8 or None when the case has
    no mask files, geometry of the first modality). Several mask files are
    united with a logical OR.

  Raises:
    DataError: a requested modality is missing, any file is invalid, or the
      files do not share one shape and affine.
  """
  names = list(case.images) if modalities is None else list(modalities)
  if not names:
    raise ValueError('no modality requested')
  paths = [_modality_path(case, name) for name in names]
  ref_path, ref = None, None
  channels = []
  for path in paths:
    vol = load_volume(path, kind='image')
    if ref is None:
      ref_path, ref = path, vol
    else:
      check_same_grid(path, vol, ref_path, ref)
    channels.append(vol.data)
  mask = None
  for path in case.masks:
    path = pathlib.Path(path)
    vol = load_volume(path, kind='mask')
    check_same_grid(path, vol, ref_path, ref)
    part = vol.data > 0.5
    mask = part if mask is None else (mask | part)
  if mask is not None:
    mask = mask.astype(np.uint8)
  return np.stack(channels).astype(np.float32, copy=False), mask, Geometry.of(ref)


def _image_class(header):
  if isinstance(header, nib.Nifti2Header):
    return nib.Nifti2Image, header.copy()
  if isinstance(header, nib.Nifti1Header):
    return nib.Nifti1Image, header.copy()
  return nib.Nifti1Image, None


def _nifti_suffix(path: pathlib.Path) -> str:
  name = path.name.lower()
  if name.endswith('.nii.gz'):
    return '.nii.gz'
  if name.endswith('.nii'):
    return '.nii'
  raise ValueError(f'{path}: output must end in .nii or .nii.gz')


def save_mask(path: str | os.PathLike, mask: np.ndarray, like: Geometry | Volume,
              dtype=np.uint8, *, overwrite: bool = False) -> pathlib.Path:
  """Writes a mask [x, y, z] on the grid (affine, header) of `like`, atomically.

  The file is written to a temporary name in the same folder and then moved
  into place, so readers never see a half-written file.

  Args:
    path: output .nii or .nii.gz path (parent folders are created).
    mask: array with the shape of `like`.
    like: the geometry (or volume) whose affine and header to copy.
    dtype: on-disk data type (uint8 by default).
    overwrite: replace an existing file instead of raising.

  Returns:
    The written path.

  Raises:
    FileExistsError: `path` exists and overwrite is False.
    ValueError: wrong shape or file extension.
  """
  path = pathlib.Path(path)
  suffix = _nifti_suffix(path)
  if path.exists() and not overwrite:
    raise FileExistsError(errno.EEXIST, 'refusing to overwrite existing file', str(path))
  mask = np.asarray(mask)
  if tuple(mask.shape) != tuple(like.shape):
    raise ValueError(f'{path}: mask shape {mask.shape} != geometry shape {tuple(like.shape)}')
  klass, header = _image_class(like.header)
  ornt = getattr(like, 'ornt', None)
  if ornt is not None:  # Back to the file's own axes, written with its own affine.
    mask, affine = orientation.from_ras(mask, ornt), like.source_affine
  else:
    affine = like.affine
  img = klass(mask.astype(dtype), np.asarray(affine, dtype=np.float64), header)
  img.set_data_dtype(dtype)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix=suffix, dir=path.parent)
  os.close(fd)
  try:
    nib.save(img, tmp)
    os.chmod(tmp, 0o644)
    if overwrite:
      os.replace(tmp, path)
    else:
      _move_no_clobber(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path


def _move_no_clobber(tmp: str, path: pathlib.Path) -> None:
  """Moves tmp to path, failing if path appeared meanwhile (a hard link is atomic)."""
  try:
    os.link(tmp, path)
  except FileExistsError:
    raise FileExistsError(errno.EEXIST, 'refusing to overwrite existing file', str(path)) from None
  except OSError:  # file system without hard links
    if path.exists():
      raise FileExistsError(errno.EEXIST, 'refusing to overwrite existing file', str(path)) from None
    os.replace(tmp, path)
