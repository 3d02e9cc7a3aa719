"""Tests for input_pipeline.nifti: validation errors, case loading, atomic mask writing."""

import pathlib
import re

import nibabel as nib
import numpy as np
import pytest

from input_pipeline import nifti
from input_pipeline.errors import DataError
from input_pipeline.layouts import Case

SHAPE = (8, 9, 5)
# RAS+ (volumes are read in RAS+ order; tests/test_orientation.py covers the other orientations).
AFFINE = np.array([[1.5, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])


def _write(path, data, affine=AFFINE, dtype=None):
  img = nib.Nifti1Image(np.asarray(data), affine)
  if dtype is not None:
    img.set_data_dtype(dtype)
  nib.save(img, str(path))
  return pathlib.Path(path)


def _random(seed=0, shape=SHAPE):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _mask(seed=0):
  return (np.random.default_rng(seed).random(SHAPE) > 0.7).astype(np.uint8)


def _raises(path, *fragments, kind='image'):
  """The DataError of loading `path`: it names the file first, then every fragment."""
  with pytest.raises(DataError, match='^' + re.escape(str(path)) + ': ') as info:
    nifti.load_volume(path, kind=kind)
  message = str(info.value)
  assert pathlib.Path(path).name in message
  for fragment in fragments:
    assert fragment in message, message
  return message


def test_load_volume_returns_float32_affine_and_spacing(tmp_path):
  data = _random()
  vol = nifti.load_volume(_write(tmp_path / 'a.nii.gz', data))
  assert vol.data.dtype == np.float32 and vol.data.shape == SHAPE
  np.testing.assert_allclose(vol.data, data)
  np.testing.assert_allclose(vol.affine, AFFINE)
  assert vol.spacing == (1.5, 2.0, 3.0)
  assert vol.shape == SHAPE


def test_missing_file(tmp_path):
  _raises(tmp_path / 'nope.nii.gz', 'not found')


@pytest.mark.parametrize('keep', [0.5, 0.9])
def test_truncated_gz(tmp_path, keep):
  path = _write(tmp_path / 'cut.nii.gz', _random())
  raw = path.read_bytes()
  path.write_bytes(raw[:int(len(raw) * keep)])
  _raises(path, 'unreadable or corrupt')


def test_truncated_uncompressed(tmp_path):
  path = _write(tmp_path / 'cut.nii', _random())
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])
  _raises(path, 'unreadable or corrupt')


@pytest.mark.parametrize('name', ['junk.nii.gz', 'junk.nii'])
def test_garbage_bytes(tmp_path, name):
  path = tmp_path / name
  path.write_bytes(np.random.default_rng(1).bytes(2000))
  _raises(path, 'unreadable or corrupt')


def test_2d_rejected(tmp_path):
  path = _write(tmp_path / 'flat.nii.gz', np.zeros((8, 9), np.float32))
  _raises(path, '3D', '(8, 9)')


def test_4d_rejected(tmp_path):
  path = _write(tmp_path / 'series.nii.gz', np.zeros((8, 9, 5, 2), np.float32))
  _raises(path, '3D', '(8, 9, 5, 2)')


def test_4d_with_trailing_singleton_is_squeezed(tmp_path):
  data = _random()[..., None]
  vol = nifti.load_volume(_write(tmp_path / 'one.nii.gz', data))
  assert vol.data.shape == SHAPE
  np.testing.assert_allclose(vol.data, data[..., 0])
  assert vol.header.get_data_shape() == SHAPE


def test_nan_and_inf_counted(tmp_path):
  data = _random()
  data[0, 0, 0] = data[1, 2, 3] = np.nan
  data[4, 4, 4] = np.inf
  message = _raises(_write(tmp_path / 'nan.nii.gz', data), 'non-finite')
  assert '3 non-finite' in message and '2 NaN' in message and '1 Inf' in message


def test_mask_value_2_rejected(tmp_path):
  data = _mask()
  data[2, 2, 2] = 2
  path = _write(tmp_path / 'mask.nii.gz', data)
  _raises(path, 'mask values must be 0 or 1', ': 2', kind='mask')
  assert nifti.load_volume(path, kind='image').data.max() == 2  # images may hold anything


def test_mask_255_rejected(tmp_path):
  path = _write(tmp_path / 'm255.nii.gz', _mask() * 255)
  _raises(path, '255', kind='mask')


def test_float_mask_with_exact_values_accepted(tmp_path):
  path = _write(tmp_path / 'fmask.nii.gz', _mask().astype(np.float32))
  vol = nifti.load_volume(path, kind='mask')
  np.testing.assert_array_equal(vol.data, _mask())


def test_bad_kind(tmp_path):
  with pytest.raises(ValueError, match=re.escape(
      "kind must be one of ('image', 'mask'), got 'label'")):
    nifti.load_volume(tmp_path / 'x.nii', kind='label')


def _case(tmp_path, images, masks=()):
  return Case('c1', {k: pathlib.Path(v) for k, v in images.items()},
              tuple(pathlib.Path(m) for m in masks), tmp_path)


def test_load_case_stacks_in_requested_order_and_unites_masks(tmp_path):
  a = _write(tmp_path / 'a.nii.gz', _random(1))
  b = _write(tmp_path / 'b.nii', _random(2))
  m1 = _write(tmp_path / 'm1.nii.gz', _mask(3))
  m2 = _write(tmp_path / 'm2.nii.gz', _mask(4).astype(np.float32))
  case = _case(tmp_path, {'A': a, 'B': b}, [m1, m2])
  image, mask, geom = nifti.load_case(case)
  assert image.shape == (2,) + SHAPE and image.dtype == np.float32
  np.testing.assert_allclose(image[1], _random(2))
  assert mask.dtype == np.uint8
  np.testing.assert_array_equal(mask, (_mask(3) | _mask(4)).astype(np.uint8))
  assert geom.shape == SHAPE and geom.spacing == (1.5, 2.0, 3.0)
  np.testing.assert_allclose(geom.affine, AFFINE)
  image, _, _ = nifti.load_case(case, ['B', 'A'])
  np.testing.assert_allclose(image[0], _random(2))
  image, _, _ = nifti.load_case(case, ['b'])  # case-insensitive fallback
  np.testing.assert_allclose(image[0], _random(2))


def test_load_case_without_masks_returns_none(tmp_path):
  case = _case(tmp_path, {'A': _write(tmp_path / 'a.nii.gz', _random())})
  assert nifti.load_case(case)[1] is None


def test_load_case_missing_modality(tmp_path):
  case = _case(tmp_path, {'A': _write(tmp_path / 'a.nii.gz', _random())})
  with pytest.raises(DataError, match=re.escape(
      f"{tmp_path}: case c1 has no modality 'FLAIR' (has: A)")):
    nifti.load_case(case, ['A', 'FLAIR'])


def test_shape_mismatch_image_mask(tmp_path):
  a = _write(tmp_path / 'img.nii.gz', _random())
  m = _write(tmp_path / 'small_mask.nii.gz', np.zeros((8, 9, 4), np.uint8))
  with pytest.raises(DataError, match=re.escape(
      f'{m}: shape (8, 9, 4) does not match shape (8, 9, 5) of img.nii.gz')):
    nifti.load_case(_case(tmp_path, {'A': a}, [m]))


def test_affine_mismatch(tmp_path):
  a = _write(tmp_path / 'a.nii.gz', _random())
  shifted = AFFINE.copy()
  shifted[0, 3] += 0.01
  b = _write(tmp_path / 'b_shifted.nii.gz', _random(), affine=shifted)
  with pytest.raises(DataError, match='b_shifted.nii.gz.*affine'):
    nifti.load_case(_case(tmp_path, {'A': a, 'B': b}))
  tiny = AFFINE.copy()
  tiny[0, 3] += 1e-4  # within tolerance
  c = _write(tmp_path / 'c.nii.gz', _random(), affine=tiny)
  assert nifti.load_case(_case(tmp_path, {'A': a, 'C': c}))[0].shape[0] == 2


def test_save_mask_roundtrip_and_no_overwrite(tmp_path):
  src = _write(tmp_path / 'src.nii.gz', _random())
  _, _, geom = nifti.load_case(_case(tmp_path, {'A': src}))
  out = tmp_path / 'pred' / 'c1.nii.gz'
  assert nifti.save_mask(out, _mask(5), geom) == out
  back = nib.load(out)
  assert back.get_data_dtype() == np.uint8
  np.testing.assert_allclose(back.affine, AFFINE)
  np.testing.assert_array_equal(np.asarray(back.dataobj), _mask(5))
  with pytest.raises(FileExistsError, match='c1.nii.gz'):
    nifti.save_mask(out, _mask(6), geom)
  np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), _mask(5))
  nifti.save_mask(out, _mask(6), geom, overwrite=True)
  np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), _mask(6))
  assert sorted(p.name for p in out.parent.iterdir()) == ['c1.nii.gz']  # no temp files


def test_save_mask_ignores_source_scaling(tmp_path):
  img = nib.Nifti1Image(np.zeros(SHAPE, np.int16), AFFINE)
  img.header.set_slope_inter(0.5, 10.0)
  nib.save(img, tmp_path / 'scaled.nii')
  vol = nifti.load_volume(tmp_path / 'scaled.nii')
  out = nifti.save_mask(tmp_path / 'm.nii', _mask(7), vol)
  back = nib.load(out)
  np.testing.assert_array_equal(back.get_fdata(), _mask(7))
  assert back.get_data_dtype() == np.uint8


def test_save_mask_rejects_wrong_shape(tmp_path):
  vol = nifti.load_volume(_write(tmp_path / 'a.nii.gz', _random()))
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'm.nii.gz'}: mask shape (2, 2, 2) != geometry shape (8, 9, 5)")):
    nifti.save_mask(tmp_path / 'm.nii.gz', np.zeros((2, 2, 2)), vol)
  assert not (tmp_path / 'm.nii.gz').exists()
