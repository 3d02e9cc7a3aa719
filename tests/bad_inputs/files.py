"""Generators of bad files (no data files are committed): each writes into a folder and returns
the path a good error message must name."""

import pathlib
import shutil

import nibabel as nib
import numpy as np


def _save(path: pathlib.Path, data: np.ndarray, affine=None, zooms=None) -> pathlib.Path:
  image = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
  if zooms is not None:
    image.header.set_zooms(zooms)
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(image, path)
  return path


def good_scan(folder: pathlib.Path, source: pathlib.Path, name: str = 'ok_0000.nii.gz'):
  """A copy of a valid scan (`source`) as `folder/name`."""
  folder.mkdir(parents=True, exist_ok=True)
  return pathlib.Path(shutil.copy(source, folder / name))


def truncated(folder: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
  path = folder / 'truncated_0000.nii.gz'
  folder.mkdir(parents=True, exist_ok=True)
  path.write_bytes(source.read_bytes()[:300])
  return path


def not_nifti(folder: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
  del source
  path = folder / 'notes_0000.nii.gz'
  folder.mkdir(parents=True, exist_ok=True)
  path.write_text('this is not a NIfTI file\n')
  return path


def _voxels(source: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  image = nib.load(source)
  return np.asarray(image.dataobj, np.float32), image.affine


def nan_voxels(folder: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
  data, affine = _voxels(source)
  data[1, 2, 3] = np.nan
  return _save(folder / 'nan_0000.nii.gz', data, affine)


def four_d(folder: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
  data, affine = _voxels(source)
  return _save(folder / 'fourd_0000.nii.gz', np.stack([data, data], -1), affine)


def two_d(folder: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
  data, affine = _voxels(source)
  return _save(folder / 'twod_0000.nii.gz', data[:, :, 0], affine)


def zero_pixdim(folder: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
  data, affine = _voxels(source)
  image = nib.Nifti1Image(data, affine)
  image.header['pixdim'][3] = 0.0  # what a broken converter writes; nibabel would "fix" it
  path = folder / 'zerospacing_0000.nii.gz'
  folder.mkdir(parents=True, exist_ok=True)
  nib.save(image, path)
  return path


def mask_like(folder: pathlib.Path, truth: pathlib.Path, name: str, *, shape=None) -> pathlib.Path:
  """A predicted mask for `truth`'s case: the truth itself, or zeros of another shape."""
  data, affine = _voxels(truth)
  if shape is not None:
    data = np.zeros(shape, np.float32)
  return _save(folder / name, (data > 0).astype(np.uint8), affine)


BAD_SCANS = {'truncated': truncated, 'not_nifti': not_nifti, 'nan': nan_voxels,
             'four_d': four_d, 'two_d': two_d, 'zero_pixdim': zero_pixdim}
