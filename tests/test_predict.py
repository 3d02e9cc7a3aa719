"""agmr_jax.predict: NIfTI in, masks out, identical to what evaluate scored; bad input refused."""

import dataclasses
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from agmr_jax import data
from agmr_jax import predict as predict_command
from agmr_jax.evaluation import metrics
from agmr_jax.evaluation import report
from agmr_jax.inference import postprocess
from agmr_jax.inference import predict
from input_pipeline.errors import DataError
from tests.test_evaluate import REPO
from tests.test_evaluate import trained_run


@pytest.fixture(scope='module')
def run(tiny_built, data_dir):
  del tiny_built
  workdir, _ = trained_run(data_dir)
  return workdir, report.read_cases(workdir / 'eval' / 'test')


def _oblique_copy(src: pathlib.Path, dst: pathlib.Path):
  """The same voxels under a rotated, shifted affine and a custom header description."""
  img = nib.load(src)
  c, s = np.cos(0.3), np.sin(0.3)
  affine = np.array([[c, -s, 0, 12.5], [s, c, 0, -40.0], [0, 0, 1, 7.0], [0, 0, 0, 1]])
  affine[:3, :3] *= img.header.get_zooms()[:3]
  out = nib.Nifti1Image(np.asarray(img.dataobj), affine)
  out.header['descrip'] = b'oblique test copy'
  nib.save(out, dst)
  return nib.load(dst)  # the affine as stored (float32 sform), which outputs must reproduce


@pytest.fixture(scope='module')
def predicted(run, tiny_raw, tmp_path_factory):
  """The test cases (named {case}_0000.nii.gz) and an oblique copy of the first, predicted."""
  _, rows = run
  root = tmp_path_factory.mktemp('predicted')
  (root / 'in').mkdir()
  for row in rows:
    shutil.copy(tiny_raw / 'imagesTr' / f"{row['case_id']}_0000.nii.gz", root / 'in')
  first = rows[0]['case_id']
  _oblique_copy(root / 'in' / f'{first}_0000.nii.gz', root / 'in' / 'oblique.nii.gz')
  results = predict.predict(root / 'in', root / 'out', run[0], save_probabilities=True)
  return root, results


def _probs(folder: pathlib.Path, case_id: str) -> np.ndarray:
  return np.asarray(nib.load(folder / 'probabilities' / f'{case_id}.nii.gz').dataobj)


def test_prediction_matches_evaluation(run, predicted, tiny_raw):
  workdir, rows = run
  root, results = predicted
  assert [r['case_id'] for r in results] == sorted([*(r['case_id'] for r in rows), 'oblique'])
  for row in rows:
    case = row['case_id']
    src = nib.load(root / 'in' / f'{case}_0000.nii.gz')
    out = nib.load(root / 'out' / f'{case}.nii.gz')
    assert out.shape == src.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, src.affine)
    mask = np.asarray(out.dataobj)
    scored = np.asarray(nib.load(workdir / 'eval/test/predictions' / f'{case}.nii.gz').dataobj)
    np.testing.assert_array_equal(mask, scored)
    truth = np.asarray(nib.load(tiny_raw / 'labelsTr' / f'{case}.nii.gz').dataobj)
    assert metrics.dsc(mask, truth) == row['dsc']  # the very number evaluate reported
    probs = nib.load(root / 'out' / 'probabilities' / f'{case}.nii.gz')
    assert probs.get_data_dtype() == np.float32
    post = postprocess.load(workdir)  # the run's validation-chosen post-processing
    np.testing.assert_array_equal(post(np.asarray(probs.dataobj), src.header.get_zooms()[:3]),
                                  mask > 0)
  oblique, out = nib.load(root / 'in' / 'oblique.nii.gz'), nib.load(root / 'out' / 'oblique.nii.gz')
  np.testing.assert_array_equal(out.affine, oblique.affine)
  assert out.header['descrip'] == oblique.header['descrip']
  first = np.asarray(nib.load(root / 'out' / f"{rows[0]['case_id']}.nii.gz").dataobj)
  np.testing.assert_array_equal(np.asarray(out.dataobj), first)
  assert not [p for p in (root / 'out').iterdir() if p.name.startswith('.')]


def test_flip_tta_and_overwrite(run, predicted, tmp_path):
  workdir, rows = run
  root, _ = predicted
  case = rows[0]['case_id']
  src = nib.load(root / 'in' / f'{case}_0000.nii.gz')
  nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[::-1].copy(), src.affine),
           tmp_path / 'flipped.nii.gz')
  (tmp_path / 'in').mkdir()
  nib.save(src, tmp_path / 'in' / f'{case}.nii.gz')
  predict.predict(tmp_path / 'flipped.nii.gz', tmp_path / 'flip', workdir, save_probabilities=True)
  predict.predict(tmp_path / 'in', tmp_path / 'tta', workdir, save_probabilities=True, tta=True,
                  overlay=True)
  # x is the slices' width axis: the mirrored scan's prediction, mirrored back, is the TTA half.
  plain = _probs(root / 'out', case)
  expected = 0.5 * (plain + _probs(tmp_path / 'flip', 'flipped')[::-1])
  tta = _probs(tmp_path / 'tta', case)
  np.testing.assert_allclose(tta, expected, atol=2e-6)
  assert np.abs(tta - plain).max() > 1e-3
  assert (tmp_path / 'tta' / 'overlays' / f'{case}.png').read_bytes()[:4] == b'\x89PNG'
  # Without --overwrite nothing is touched; with it the outputs are replaced.
  with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / 'tta' / f'{case}.nii.gz'))):
    predict.predict(tmp_path / 'in', tmp_path / 'tta', workdir)
  np.testing.assert_array_equal(_probs(tmp_path / 'tta', case), tta)
  predict.predict(tmp_path / 'in', tmp_path / 'tta', workdir, save_probabilities=True,
                  overwrite=True)
  np.testing.assert_array_equal(_probs(tmp_path / 'tta', case), plain)


def _write(path, data, affine=np.eye(4)):
  nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
  return path


def _make_problem(problem: str, inputs: pathlib.Path, out: pathlib.Path):
  """Sets up one kind of bad input; returns (what to predict, path the error names, error)."""
  good = _write(inputs / 'a.nii.gz', np.ones((8, 8, 4)))
  if problem == 'empty_folder':
    good.unlink()
    return inputs, inputs, DataError
  if problem == 'four_d':
    return inputs, _write(inputs / 'b.nii.gz', np.ones((8, 8, 4, 2))), DataError
  if problem == 'garbage':
    (inputs / 'c.nii.gz').write_bytes(b'\x1f\x8b\x08 truncated')
    return inputs, inputs / 'c.nii.gz', DataError
  if problem == 'not_nifti':
    (inputs / 'd.txt').write_text('hello')
    return inputs / 'd.txt', inputs / 'd.txt', DataError
  if problem == 'channel_0001':
    return inputs, _write(inputs / 'e_0001.nii.gz', np.ones((8, 8, 4))), DataError
  if problem == 'output_exists':
    out.mkdir()
    (out / 'a.nii.gz').write_bytes(b'keep me')
    return inputs, out / 'a.nii.gz', FileExistsError
  assert problem == 'output_is_file'
  out.write_bytes(b'keep me')
  return inputs, out, DataError


@pytest.mark.parametrize('problem', ['empty_folder', 'four_d', 'garbage', 'not_nifti',
                                     'channel_0001', 'output_exists', 'output_is_file'])
def test_bad_input_names_the_file_and_writes_nothing(run, tmp_path, problem):
  workdir, _ = run
  inputs, out = tmp_path / 'in', tmp_path / 'out'
  inputs.mkdir()
  source, named, error = _make_problem(problem, inputs, out)
  before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
  with pytest.raises(error, match=re.escape(str(named))):
    predict.predict(source, out, workdir)
  if problem.startswith('output'):
    assert named.read_bytes() == b'keep me'
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before
  else:
    assert not out.exists()


@pytest.mark.parametrize('problem', ['missing_channel', 'extra_channel', 'single_file'])
def test_modality_problems_of_a_two_modality_run_stop_before_any_output(
    run, tmp_path, monkeypatch, problem):
  """A run taking two modalities (its recipe swapped in) given the wrong channels."""
  workdir, _ = run
  recipe = dataclasses.replace(data.run_recipe(None, workdir), modalities=('DWI', 'ADC'))
  monkeypatch.setattr(data, 'run_recipe', lambda config, workdir: recipe)
  inputs, out = tmp_path / 'in', tmp_path / 'out'
  inputs.mkdir()
  for name in ('p1_0000', 'p1_0001', 'p2_0000', 'p2_0001'):
    _write(inputs / f'{name}.nii.gz', np.ones((8, 8, 4)))
  source, named = inputs, inputs
  if problem == 'missing_channel':
    (inputs / 'p2_0001.nii.gz').unlink()
    message = 'case p2 is missing channel 0001 (ADC, expected p2_0001.nii.gz)'
  elif problem == 'extra_channel':
    named = _write(inputs / 'p2_0002.nii.gz', np.ones((8, 8, 4)))
    message = "channel 0002 but only 2 channel(s): ('DWI', 'ADC')"
  else:
    source = named = inputs / 'p1_0000.nii.gz'
    message = 'the run takes 2 modalities'
  with pytest.raises(DataError, match=re.escape(f'{named}: {message}')):
    predict.predict(source, out, workdir)
  assert not out.exists()


def test_failure_in_a_later_case_leaves_no_output(run, tiny_raw, tmp_path):
  workdir, rows = run
  inputs = tmp_path / 'in'
  inputs.mkdir()
  shutil.copy(tiny_raw / 'imagesTr' / f"{rows[0]['case_id']}_0000.nii.gz", inputs / 'a.nii.gz')
  # A valid header with truncated voxel data: passes the header check, fails at load time.
  bad = _write(inputs / 'b.nii', np.ones((40, 36, 12)))
  bad.write_bytes(bad.read_bytes()[:2000])
  with pytest.raises(DataError, match=re.escape(str(bad))):
    predict.predict(inputs, tmp_path / 'out', workdir)
  assert not (tmp_path / 'out').exists()


def test_multimodal_folder_discovery(tmp_path):
  modalities = ('CBF', 'CBV')
  for name in ('p1_0000', 'p1_0001', 'p2_0000', 'p2_0001'):
    (tmp_path / f'{name}.nii.gz').touch()
  cases = predict.find_cases(tmp_path, modalities)
  assert [c.case_id for c in cases] == ['p1', 'p2']
  assert cases[0].images == {'CBF': tmp_path / 'p1_0000.nii.gz', 'CBV': tmp_path / 'p1_0001.nii.gz'}
  with pytest.raises(DataError, match='takes 2 modalities'):
    predict.find_cases(tmp_path / 'p1_0000.nii.gz', modalities)
  (tmp_path / 'p2_0001.nii.gz').unlink()
  with pytest.raises(DataError, match=r'case p2 is missing channel 0001 \(CBV'):
    predict.find_cases(tmp_path, modalities)
  (tmp_path / 'p2_0001.nii.gz').touch()
  (tmp_path / 'p2_0002.nii.gz').touch()  # a third modality for a two-modality run
  with pytest.raises(DataError, match=re.escape(str(tmp_path / 'p2_0002.nii.gz'))):
    predict.find_cases(tmp_path, modalities)


def test_cli_reports_an_empty_folder(run, tmp_path):
  workdir, _ = run
  (tmp_path / 'empty').mkdir()
  proc = subprocess.run(
      [sys.executable, '-m', 'agmr_jax.predict', '-i', str(tmp_path / 'empty'), '-o',
       str(tmp_path / 'out'), f'--workdir={workdir}'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1
  assert f'error: {tmp_path / "empty"}: input folder is empty' in proc.stderr
  assert not (tmp_path / 'out').exists()


def test_main_writes_the_masks_of_the_library_call(run, predicted, tmp_path, capsys):
  """agmr-predict's main(argv), old spelling --output included, gives the library's masks."""
  workdir, rows = run
  root, _ = predicted
  case = rows[0]['case_id']
  (tmp_path / 'in').mkdir()
  shutil.copy(root / 'in' / f'{case}_0000.nii.gz', tmp_path / 'in')
  assert predict_command.main(['-i', str(tmp_path / 'in'), '--output', str(tmp_path / 'out'),
                               f'--workdir={workdir}']) == 0
  assert 'note: --output is deprecated; use --out' in capsys.readouterr().err
  written = nib.load(tmp_path / 'out' / f'{case}.nii.gz')
  assert np.array_equal(np.asarray(written.dataobj),
                        np.asarray(nib.load(root / 'out' / f'{case}.nii.gz').dataobj))
  with pytest.raises(SystemExit) as exit_info:  # Existing outputs: one line, nothing replaced.
    predict_command.main(['-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'out'),
                          f'--workdir={workdir}'])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.startswith(f'error: {tmp_path / "out" / case}.nii.gz: exists')


def test_sigterm_during_prediction_removes_the_staging_folder(run, predicted, tmp_path, capsys,
                                                             monkeypatch):
  """SIGTERM in the middle of a case: exit 75, one line, OUT as it was (here: an earlier mask)."""
  workdir, rows = run
  root, _ = predicted
  (tmp_path / 'in').mkdir()
  for row in rows[:2]:
    shutil.copy(root / 'in' / f"{row['case_id']}_0000.nii.gz", tmp_path / 'in')
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('a file of the user')
  real = predict._predict_case

  def terminated_during_case(case, *args, **kwargs):
    result = real(case, *args, **kwargs)  # the first case's outputs are staged ...
    os.kill(os.getpid(), signal.SIGTERM)  # ... then the scheduler stops the job
    return result

  monkeypatch.setattr(predict, '_predict_case', terminated_during_case)
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as exit_info:
    predict_command.main(['-i', str(tmp_path / 'in'), '-o', str(out), f'--workdir={workdir}'])
  assert exit_info.value.code == 75
  err = capsys.readouterr().err
  assert 'error: stopped by SIGTERM' in err and 'Traceback' not in err
  assert sorted(p.name for p in out.iterdir()) == ['keep.txt']
  assert signal.getsignal(signal.SIGTERM) is handler  # the command's handler is gone again
