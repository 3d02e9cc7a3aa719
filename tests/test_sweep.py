"""launch.sweep on configs/unet.py:tiny's 2 folds x 2 seeds: run, tabulate, skip, resume, emit."""

import csv
import json
import os
import subprocess

import pytest

from agmr_jax import config_spec
from agmr_jax import sweeps
from launch import cluster_jobs
from launch import sweep
from tests import launch_helpers as helpers

# Cheaper than the tiny variant's defaults; the grid itself is the config's.
SHARED = [*(f'--config.{k}={v}' for k, v in helpers.SHARED_OVERRIDES.items()),
          '--config.num_train_steps=2', '--config.eval_every_steps=2',
          '--config.checkpoint_every_steps=2']


def _argv(root, data_dir, *extra):
  return ['--config', 'configs/unet.py:tiny', '--workdir_root', str(root),
          f'--config.data.data_dir={data_dir}', *SHARED, *extra]


def _summary_times(root):
  return {p.parent.parent.parent.name: p.stat().st_mtime_ns
          for p in root.glob('*/eval/test/summary.json')}


@pytest.fixture(scope='module')
def swept(tiny_built, data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp('sweep')
  env = helpers.child_env(4)
  with pytest.MonkeyPatch.context() as patch:  # The points' processes inherit this environment.
    for key, value in env.items():
      patch.setenv(key, value)
    code = sweep.main(_argv(root, data_dir))
  return root, code


def test_sweep_runs_every_point_and_tabulates_them(swept):
  root, code = swept
  assert code == 0
  with (root / 'sweep.csv').open() as f:
    rows = list(csv.DictReader(f))
  points, mean = rows[:-1], rows[-1]
  assert {(r['fold'], r['seed']) for r in points} == {
      ('3', '0'), ('3', '1'), ('4', '0'), ('4', '1')}
  assert all(r['status'] == 'finished' and r['step'] == '2' for r in points)
  for r in points:
    assert 0.0 <= float(r['test_dsc']) <= 1.0 and 0.0 <= float(r['best_val_dice']) <= 1.0
    assert r['test_cases'] == '2'
  dsc = [float(r['test_dsc']) for r in points]
  assert float(mean['test_dsc']) == pytest.approx(sum(dsc) / len(dsc))
  # The seed took effect: same fold, other seed, other training curve.
  by_point = {(r['fold'], r['seed']): float(r['train_loss']) for r in points}
  assert by_point[('3', '0')] != by_point[('3', '1')]
  assert (root / 'sweep.md').read_text().count('| finished |') == 4


def test_saved_point_config_is_the_config_the_run_used(swept):
  root, _ = swept
  for point_dir in sorted(p for p in root.iterdir() if p.is_dir()):
    record = json.loads((point_dir / 'sweep_point.json').read_text())
    assert record['config'] == json.loads((point_dir / 'config.json').read_text())
    assert record['config']['seed'] == record['values']['seed']
    assert record['config']['data']['test_fold'] == record['values']['fold']
    assert record['config']['data']['val_fold'] == (record['values']['fold'] + 1) % 5
    assert point_dir.name == f"fold={record['values']['fold']},seed={record['values']['seed']}"


def test_rerun_skips_finished_points(swept, data_dir, capsys):
  root, _ = swept
  before = _summary_times(root)
  table_before = (root / 'sweep.md').read_text()
  (root / 'sweep.md').unlink()
  assert sweep.main(_argv(root, data_dir)) == 0  # --run local: nothing left to run.
  assert '4 points, 4 finished, 0 to run' in capsys.readouterr().out
  assert _summary_times(root) == before and len(before) == 4
  assert (root / 'sweep.md').read_text() == table_before


def test_status_tells_finished_partial_and_new_points(swept, tmp_path):
  root, _ = swept
  points = sweeps.make_points('configs/unet.py:tiny', root, {'data.data_dir': 'unused'})
  assert {sweeps.status(p) for p in points} == {'finished'}
  fresh = sweeps.make_points('configs/unet.py:tiny', tmp_path)[0]
  assert sweeps.status(fresh) == 'new'
  (fresh.workdir / 'checkpoints' / '3').mkdir(parents=True)
  assert sweeps.status(fresh) == 'partial'


def test_changed_shared_overrides_are_refused(swept, data_dir, capsys):
  root, _ = swept
  with pytest.raises(SystemExit) as exit_info:
    sweep.main(['--config', 'configs/unet.py:tiny', '--workdir_root', str(root),
                f'--config.data.data_dir={data_dir}', '--run', 'none'])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'another config' in err and len(err.splitlines()) == 1


def test_slurm_array_runs_the_unfinished_points(tmp_path):
  points = sweeps.make_points('configs/unet.py:tiny', tmp_path / 'root', {'batch_size': '16'})
  script = cluster_jobs.write_slurm_array(points, tmp_path / 'root', python='python', gpus=1)
  text = script.read_text()
  assert '#SBATCH --array=0-3' in text and '#SBATCH --gres=gpu:1' in text
  fake = tmp_path / 'fake_python'
  fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
  fake.chmod(0o755)
  env = dict(os.environ, SLURM_ARRAY_TASK_ID='2', PYTHON=str(fake))
  done = subprocess.run(['bash', str(script)], env=env, capture_output=True, text=True, check=True)
  assert done.stdout.splitlines() == ['-m', 'agmr_jax.main', *points[2].args]
  assert '--config.batch_size=16' in points[2].args


def test_k8s_job_list_holds_one_job_per_point(tmp_path):
  points = sweeps.make_points('configs/unet.py:tiny', tmp_path / 'root')
  path = cluster_jobs.write_k8s_jobs(points, tmp_path / 'root', image='img', pvc='runs', gpus=1)
  jobs = json.loads(path.read_text())
  assert jobs['kind'] == 'List' and len(jobs['items']) == 4
  for job, point in zip(jobs['items'], points):
    container = job['spec']['template']['spec']['containers'][0]
    assert container['command'] == ['python', '-m', 'agmr_jax.main', *point.args]
    rules = job['spec']['podFailurePolicy']['rules']
    assert rules[0]['onExitCodes']['values'] == [75]


def test_grid_and_point_lists_expand():
  assert sweeps.expand({'a': [1, 2], 'b': ['x']}) == [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
  assert sweeps.expand([{'a': 1}]) == [{'a': 1}]
  with pytest.raises(ValueError):
    sweeps.expand({'a': 1})
  assert config_spec.format_value((64, 64)) == '(64,64)' and config_spec.format_value(True) == 'true'
