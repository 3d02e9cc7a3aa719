"""agmr-study on configs/studies/tiny.py (U-Net vs Attention U-Net): run, report, skip; errors;
the paired tests' arithmetic against hand-computed values."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from agmr_jax import study
from agmr_jax.evaluation import compare
from agmr_jax.evaluation import study as study_report
from tests import launch_helpers as helpers

# Cheaper than the tiny variants' widths and optimizer (as tests/test_sweep.py).
SHARED = [f'--config.{k}={v}' for k, v in helpers.SHARED_OVERRIDES.items()]


def _argv(root, data_dir, *extra):
  return ['--study', 'configs/studies/tiny.py', '--workdir_root', str(root),
          f'--config.data.data_dir={data_dir}', *SHARED, *extra]


def _mtimes(root):
  return {p.relative_to(root): p.stat().st_mtime_ns
          for p in root.glob('*/*') if p.name in ('metrics.jsonl', 'checkpoints', 'eval')}


@pytest.fixture(scope='module')
def studied(tiny_built, data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp('study')
  with pytest.MonkeyPatch.context() as patch:  # The runs' processes inherit this environment.
    for key, value in helpers.child_env(1).items():
      patch.setenv(key, value)
    code = study.main(_argv(root, data_dir))
  return root, code


def test_study_runs_every_network_and_writes_its_report(studied):
  root, code = studied
  assert code == 0
  for name in ('study.md', 'study.csv', 'study_dsc_boxplot.png', 'study_montage.png',
               'machine.json'):
    assert (root / name).stat().st_size > 0, name
  with (root / 'study.csv').open() as f:
    rows = list(csv.DictReader(f))
  assert [r['network'] for r in rows] == ['unet', 'attention_unet']
  assert [r['reference'] for r in rows] == ['True', 'False']
  for r in rows:
    assert int(r['params']) > 0 and float(r['gflops_per_slice']) > 0
    assert float(r['steps']) == 2 and float(r['train_s']) > 0 and float(r['steps_per_s']) > 0
    assert 0 <= float(r['dsc_mean']) <= 1 and r['cases'] == '2'
    assert {'lesion_f1_mean', 'volume_diff_ml_mean', 'lesion_count_diff_mean', 'hd95_mean',
            'asd_mean', 'global_dsc'} <= set(r)
  assert rows[0]['dsc_p'] == '' and 0 <= float(rows[1]['dsc_p']) <= 1
  assert 0 <= float(rows[1]['lesion_f1_p_holm']) <= 1
  text = (root / 'study.md').read_text()
  assert '| unet (reference) |' in text and 'Holm' in text and 'Machine: ' in text
  assert '](study_dsc_boxplot.png)' in text and '](study_montage.png)' in text
  for name in ('unet', 'attention_unet'):  # The montage's masks: every run wrote predictions.
    assert list((root / name / 'eval' / 'test' / 'predictions').glob('*.nii.gz'))
    assert json.loads((root / name / 'sweep_point.json').read_text())['config']['seed'] == 0


def test_rerun_trains_nothing_and_rewrites_the_report(studied, data_dir, capsys):
  root, _ = studied
  before = _mtimes(root)
  table = (root / 'study.csv').read_text()
  (root / 'study.md').unlink()
  assert study.main(_argv(root, data_dir)) == 0
  assert '2 runs finished, 0 to run' in capsys.readouterr().out
  assert _mtimes(root) == before and len(before) == 6
  assert (root / 'study.csv').read_text() == table and (root / 'study.md').exists()


def test_changed_protocol_is_refused(studied, data_dir, capsys):
  root, _ = studied
  with pytest.raises(SystemExit) as exit_info:
    study.main(_argv(root, data_dir, '--config.batch_size=4', '--run=none'))
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith('error: ') and len(err.splitlines()) == 1


def test_interrupted_entry_is_scheduled_and_left_out_of_the_table(studied, data_dir, capsys):
  root, _ = studied
  evaluation = root / 'attention_unet' / 'eval'
  evaluation.rename(root / 'eval_aside')  # Trained (checkpoint) but not evaluated: partial.
  try:
    assert study.main(_argv(root, data_dir, '--run=none')) == 0
    assert '1 runs finished, 1 to run' in capsys.readouterr().out
    with (root / 'study.csv').open() as f:
      assert [r['network'] for r in csv.DictReader(f)] == ['unet']
    assert 'Not finished yet (no row): attention_unet' in (root / 'study.md').read_text()
  finally:
    (root / 'eval_aside').rename(evaluation)


@pytest.mark.parametrize('body', [
    "{'entries': {'unet': 'configs/unet.py:tiny'}, 'reference': 'dunet'}",
    "{'entries': ['configs/unet.py:tiny'], 'reference': 'unet', 'seeds': []}",
    "{'entries': {'unet': 'configs/unet.py:tiny'}, 'reference': 'unet', 'protocl': {}}",
    "{'entries': {'unet': 'configs/unet.py:tiny'}, 'reference': 'unet',"
    " 'protocol': {'no_such_field': 1}}",
    "['configs/unet.py:tiny']",
])
def test_bad_study_definition_is_one_error_line(body, tmp_path, capsys):
  path = tmp_path / 'bad_study.py'
  path.write_text(f'def get_study(arg=None):\n  return {body}\n')
  with pytest.raises(SystemExit) as exit_info:
    study.main(['--study', str(path), '--workdir_root', str(tmp_path / 'root'), '--run=none'])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith('error: ') and len(err.splitlines()) == 1, err
  assert not (tmp_path / 'root').exists()


def test_a_killed_study_resumes_its_run_and_reports(data_dir, tiny_built, tmp_path, capsys,
                                                   monkeypatch):
  """SIGKILL to the study and the run it trains, once that run has a checkpoint; the same command
  again resumes that run from its checkpoint (not from scratch), trains the other, and reports."""
  root = tmp_path / 'root'
  longer = ['--config.num_train_steps=120', '--config.checkpoint_every_steps=6',
            '--config.eval_every_steps=120', '--config.log_every_steps=6']
  env = helpers.child_env(1)
  for key, value in env.items():
    monkeypatch.setenv(key, value)  # The in-process rerun's children too.
  log = tmp_path / 'study.log'
  with log.open('w') as out:
    proc = subprocess.Popen([sys.executable, '-m', 'agmr_jax.study', *_argv(root, data_dir, *longer)],
                            cwd=helpers.REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # One group: the study and its run.
  checkpoints = root / 'unet' / 'checkpoints'
  deadline = time.monotonic() + helpers.TIMEOUT_S
  try:
    while not any(c.name.isdigit() for c in checkpoints.glob('*')):
      assert proc.poll() is None and time.monotonic() < deadline, helpers.tail(log)
      time.sleep(0.05)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  assert not (root / 'unet' / 'eval').exists()  # Killed in training, not after it.
  assert study.main(_argv(root, data_dir, *longer)) == 0
  assert '0 runs finished, 2 to run' in capsys.readouterr().out
  resumed = re.search(r'Resumed from step (\d+)', (root / 'unet' / 'sweep_run.log').read_text())
  assert resumed and int(resumed.group(1)) >= 6
  with (root / 'study.csv').open() as f:
    rows = list(csv.DictReader(f))
  assert [r['network'] for r in rows] == ['unet', 'attention_unet']
  assert all(float(r['steps']) == 120 for r in rows)


def test_holm_against_hand_computed_values():
  # Sorted 0.01, 0.03, 0.04: 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04).
  assert study_report.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
  assert study_report.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # Capped at 1.
  nan, one = study_report.holm([float('nan'), 0.02])
  assert nan != nan and one == pytest.approx(0.02)  # NaN is not counted in the family.


def test_paired_wilcoxon_and_holm_of_a_study_table():
  # Reference 1.0 on five cases. b: five losses 0.1..0.5, all one sign: exact two-sided
  # p = 2 * 1/32. c: the loss of rank 2 is a gain instead: W- = 2, and 3 of the 32 sign
  # patterns have a rank sum <= 2 ({}, {1}, {2}): p = 2 * 3/32.
  ref = [1.0] * 5
  b = [0.9, 0.8, 0.7, 0.6, 0.5]
  c = [0.9, 1.2, 0.7, 0.6, 0.5]
  assert compare.wilcoxon_p(ref, b)[0] == pytest.approx(2 / 32)
  assert compare.wilcoxon_p(ref, c)[0] == pytest.approx(6 / 32)

  def cases(values):
    return {f'c{i}': {'dsc': v, 'lesion_f1': v} for i, v in enumerate(values)}
  table = [{'network': n} for n in ('a', 'b', 'c')]
  study_report._paired_tests(table, {'a': cases(ref), 'b': cases(b), 'c': cases(c)}, 'a')
  assert 'dsc_p' not in table[0]
  for m in ('dsc', 'lesion_f1'):
    assert table[1][f'{m}_p'] == pytest.approx(2 / 32)
    assert table[2][f'{m}_p'] == pytest.approx(6 / 32)
    # Holm over the two: 2 * 2/32 = 0.125, then max(0.125, 6/32) = 0.1875.
    assert table[1][f'{m}_p_holm'] == pytest.approx(0.125)
    assert table[2][f'{m}_p_holm'] == pytest.approx(0.1875)


def test_slurm_mode_writes_an_array_of_the_unfinished_runs(tmp_path, data_dir, capsys):
  root = tmp_path / 'root'
  assert study.main(_argv(root, data_dir, '--run=slurm')) == 0
  assert '#SBATCH --array=0-1' in (root / 'sweep.sbatch').read_text()
  assert 'sbatch' in capsys.readouterr().out
  text = (root / 'study.md').read_text()
  assert 'Not finished yet (no row): unet, attention_unet' in text


@pytest.mark.parametrize('name,reference,dataset', [
    ('synthetic_atlas', 'agmr_net', 'synthetic_atlas'),
    ('synthetic_isles2018', 'mdanet', 'synthetic_isles2018')])
def test_committed_studies_share_their_protocol(name, reference, dataset, tmp_path):
  definition = study.load_study(f'configs/studies/{name}.py')
  points = study.make_points(definition, tmp_path, {})
  assert points[0][0] == reference and len(points) == len(definition.entries)
  for entry, _, point in points:
    config = point.config
    assert config.model == entry
    assert (config.data.dataset, config.data.test_fold, config.data.image_size) == (
        dataset, 4, (64, 64))
    assert config.num_train_steps == points[0][2].config.num_train_steps
    assert config.write_predictions and config.final_eval
