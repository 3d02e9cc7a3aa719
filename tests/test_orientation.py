"""One canonical orientation (RAS+): the same brain stored RAS, LPS or with permuted axes reads as
the same array, and a prediction comes back on each input's own grid with the same mask."""


import nibabel as nib
import numpy as np
import pytest

from agmr_jax.evaluation import report
from agmr_jax.inference import predict
from input_pipeline import nifti
from input_pipeline import orientation
from input_pipeline.errors import DataError
from tests.test_evaluate import trained_run


def _restored(path):
  """A file's voxels in RAS+ order, read independently of nifti.py (nibabel's canonical)."""
  return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def _reoriented_copies(src, folder):
  """src saved three ways: as is (RAS), LPS (x and y reversed) and with axes (z, y, x)."""
  img = nib.load(src)
  data, affine = np.asarray(img.dataobj), img.affine
  shape = np.array(data.shape)
  lps = affine @ np.array([[-1, 0, 0, shape[0] - 1], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0],
                           [0, 0, 0, 1]], float)
  zyx = affine @ np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
  copies = {'ras': (data, affine), 'lps': (data[::-1, ::-1], lps),
            'zyx': (data.transpose(2, 1, 0), zyx)}
  for name, (array, aff) in copies.items():
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array), aff), folder / f'{name}.nii.gz')
  return copies


def test_every_orientation_reads_as_the_same_ras_volume(tiny_raw, tmp_path):
  copies = _reoriented_copies(tiny_raw / 'imagesTr' / 'tiny_000_0000.nii.gz', tmp_path)
  volumes = {name: nifti.load_volume(tmp_path / f'{name}.nii.gz') for name in copies}
  for name in ('lps', 'zyx'):
    np.testing.assert_array_equal(volumes[name].data, volumes['ras'].data)
    np.testing.assert_allclose(volumes[name].affine, volumes['ras'].affine, atol=1e-5)
    assert volumes[name].spacing == pytest.approx(volumes['ras'].spacing)
  assert volumes['ras'].ornt is None and volumes['lps'].ornt is not None
  # Written back, a mask lands on each file's own grid.
  mask = (volumes['ras'].data > np.median(volumes['ras'].data)).astype(np.uint8)
  for name, (array, affine) in copies.items():
    out = nifti.save_mask(tmp_path / f'mask_{name}.nii.gz', mask, volumes[name])
    written = nib.load(out)
    assert written.shape == array.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(_restored(out), mask)


def test_orientation_round_trip_is_exact():
  rng = np.random.default_rng(0)
  data = rng.random((3, 4, 5))
  affine = np.array([[0, 0, -2.0, 9], [0, 1.5, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
  ras, ras_affine, ornt = orientation.to_ras(data, affine)
  assert ras.shape == (5, 4, 3) and nib.aff2axcodes(ras_affine) == ('R', 'A', 'S')
  np.testing.assert_array_equal(orientation.from_ras(ras, ornt), data)
  assert orientation.from_ras(data, None) is data  # RAS+ already: untouched
  assert orientation.permuted_spacing((1.0, 1.5, 2.0), ornt) == (2.0, 1.5, 1.0)


def test_a_prediction_is_the_same_mask_whatever_the_input_orientation(tiny_built, data_dir,
                                                                       tiny_raw, tmp_path):
  del tiny_built
  workdir, _ = trained_run(data_dir)
  case = report.read_cases(workdir / 'eval' / 'test')[0]['case_id']
  (tmp_path / 'in').mkdir()
  copies = _reoriented_copies(tiny_raw / 'imagesTr' / f'{case}_0000.nii.gz', tmp_path / 'in')
  predict.predict(tmp_path / 'in', tmp_path / 'out', workdir)
  masks = {name: _restored(tmp_path / 'out' / f'{name}.nii.gz') for name in copies}
  assert masks['ras'].any()
  for name, (array, affine) in copies.items():
    written = nib.load(tmp_path / 'out' / f'{name}.nii.gz')
    assert written.shape == array.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(masks[name], masks['ras'])


@pytest.mark.parametrize('pixdim', [(1.0, 0.0, 1.0), (1.0, -2.0, 1.0)])
def test_a_zero_or_negative_pixdim_names_the_file(tmp_path, pixdim):
  img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
  img.header['pixdim'][1:4] = pixdim
  path = tmp_path / 'bad.nii.gz'
  nib.save(img, path)
  with pytest.raises(DataError, match=f'{path}: invalid voxel spacing'):
    nifti.load_volume(path)
