"""Bad input stops a build with one message naming the file, exit status 1, and no dataset."""

import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from input_pipeline import datasets
from input_pipeline import recipes
from input_pipeline import synthetic
from input_pipeline.errors import DataError


def _corrupt(raw: pathlib.Path, how: str) -> str:
  """Damages case tiny_002 (or the tree) and returns the file name the error must name."""
  image = raw / 'imagesTr' / 'tiny_002_0000.nii.gz'
  label = raw / 'labelsTr' / 'tiny_002.nii.gz'
  ref = nib.load(image)
  data = np.asarray(ref.dataobj, np.float32)
  if how == 'truncated':
    image.write_bytes(image.read_bytes()[:300])
    return image.name
  if how == 'nan':
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, ref.affine), image)
    return image.name
  if how == 'shape':
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), ref.affine), label)
    return label.name
  if how == 'affine':
    nib.save(nib.Nifti1Image(np.asarray(nib.load(label).dataobj), ref.affine * 2), label)
    return label.name
  if how == 'mask_values':
    mask = np.asarray(nib.load(label).dataobj).copy()
    mask[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(mask, ref.affine), label)
    return label.name
  if how == '2d':
    nib.save(nib.Nifti1Image(data[:, :, 0], ref.affine), image)
    return image.name
  if how == 'missing_modality':
    image.unlink()
    return 'tiny_002'
  raise ValueError(how)


@pytest.mark.parametrize('how', ['truncated', 'nan', 'shape', 'affine', 'mask_values', '2d',
                                 'missing_modality'])
def test_bad_file_names_the_file_and_leaves_no_dataset(tmp_path, how):
  raw = tmp_path / 'raw'
  synthetic.write_dataset('synthetic_tiny', raw, 5)
  name = _corrupt(raw, how)
  data_dir = tmp_path / 'data'
  with pytest.raises(DataError, match=name):
    datasets.prepare('nnunet', recipes.RECIPES['tiny_2p5d'], data_dir=data_dir, manual_dir=raw)
  assert not list(data_dir.rglob('*.array_record*'))
  assert not list(data_dir.rglob('dataset_info.json'))


def test_build_command_exits_1_with_one_message(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  cmd = [sys.executable, '-m', 'input_pipeline.build', '--dataset', 'atlas_r12',
         '--recipe', 'agmr_2p5d', '--manual_dir', str(empty), '--data_dir', str(tmp_path / 'd')]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          cwd=pathlib.Path(__file__).parents[1], env=dict(os.environ))
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and str(empty) in errors[0]
  assert not (tmp_path / 'd').exists() or not list((tmp_path / 'd').rglob('*.array_record*'))
