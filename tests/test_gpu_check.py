"""The prepared accelerator check runs end to end: its CPU dry run, through the same shell script.

One dry run (benchmarks/gpu_check.sh --dry_run: every stage at tiny shapes, a few steps) writes the
summary and its JSON; each stage must have succeeded and left its section. The copy to $OUT (what
the device tool brings back) must stay within the tool's limits. Parsers and file names are
checked without running anything.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from benchmarks import gpu_check
from benchmarks import gpu_check_env
from benchmarks import gpu_check_loader
from benchmarks import gpu_check_throughput

REPO = pathlib.Path(__file__).resolve().parent.parent
SECTIONS = ('## Versions', '## (a) XLA vs PyTorch throughput', '## (b) Determinism',
            '## (c) Prediction seconds per 197x233x189 volume',
            '## (d) Loader supply vs GPU consumption')


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
  """(summary json path, results dict, $OUT folder) of one dry run of the shell script."""
  root = tmp_path_factory.mktemp('gpu_check')
  out = root / 'device_out'
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_NUM_CPU_DEVICES', 'XLA_FLAGS')}
  env.update(PYTHON=sys.executable, OUT=str(out))
  proc = subprocess.run(
      ['bash', 'benchmarks/gpu_check.sh', '--dry_run', '--out_dir', str(root / 'results'),
       '--work_dir', str(root / 'work')], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (path,) = (root / 'results').glob('gpu_check-cpu-*-dryrun.json')
  return path, json.loads(path.read_text()), out


def test_every_stage_succeeds_and_has_its_section(dry_run):
  path, results, _ = dry_run
  stages = results['stages']
  assert {s: stages[s]['status'] for s in gpu_check.STAGES} == dict.fromkeys(gpu_check.STAGES, 'ok')
  summary = path.with_suffix('.md').read_text()
  for section in SECTIONS:
    assert section in summary
  assert 'CPU DRY RUN' in summary
  versions = stages['versions']['packages']
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'torch', 'numpy', 'grain'):
    assert versions[name]['version'], name


def test_throughput_table_has_both_frameworks(dry_run):
  path, results, _ = dry_run
  table = path.parent / results['stages']['throughput']['file']
  runs = json.loads(table.read_text())['runs']
  assert {(r['framework'], r['status']) for r in runs} == {('jax', 'ok'), ('torch_eager', 'ok')}
  assert '| unet | bf16 |' in path.with_suffix('.md').read_text()


def test_determinism_is_bitwise_and_resumes(dry_run):
  _, results, _ = dry_run
  det = results['stages']['determinism']
  comparisons = det['comparisons']
  assert set(comparisons) == {'det_a vs det_killed', 'det_a vs nondet'}  # det_b: GPU only.
  assert comparisons['det_a vs det_killed']['bitwise_equal']
  killed = det['runs']['det_killed']
  assert killed['killed_after_step'] and 3 <= killed['resumed_from'] < 12, killed
  # On CPU the flags are inert: the run without them computes the same parameters.
  assert comparisons['det_a vs nondet']['max_abs_difference'] == 0.0
  assert det['deterministic_step_cost'] is not None


def test_prediction_and_loader_rows(dry_run):
  _, results, _ = dry_run
  rows = results['stages']['predict']['rows']
  assert [(r['network'], r['precision'], r['status']) for r in rows] == [('unet', 'bf16', 'ok')]
  assert rows[0]['volume'] == [197, 233, 189] and rows[0]['seconds_per_volume'] > 0
  loader = results['stages']['loader']
  assert loader['rows'] and all(r['per_core'] > 0 for r in loader['rows'])


def test_out_copy_fits_the_device_tool(dry_run):
  path, _, out = dry_run
  files = sorted(p for p in out.rglob('*') if p.is_file())
  assert path.name in {f.name for f in files} and len(files) <= 8
  assert all(re.fullmatch(r'[A-Za-z0-9._-]+', f.name) and f.parent == out for f in files)
  assert sum(f.stat().st_size for f in files) < 16 * 2**20


def test_loader_rows_parse_old_and_new_tables():
  new = ('| preset | augmentation on | workers | slices/s | slices/s per core |\n|---|---|---|---|---|\n'
         '| none | nothing | 0 | 1,234 | 1,234 |\n| demo | host | 2 | 500 | 250 |\n\n'
         '| network | train step s |\n|---|---|\n| unet | 0.2 |\n')
  assert gpu_check_loader.parse_rows(new) == [
      {'augmentation': 'none, nothing', 'workers': 0, 'slices_per_s': 1234.0, 'per_core': 1234.0},
      {'augmentation': 'demo, host', 'workers': 2, 'slices_per_s': 500.0, 'per_core': 250.0}]
  old = '| what | workers | slices/s | slices/s per core |\n|---|---|---|---|\n| loader, none | 1 | 9 | 9 |'
  assert gpu_check_loader.parse_rows(old)[0]['augmentation'] == 'loader, none'
  assert gpu_check_loader.supply_per_core(gpu_check_loader.parse_rows(new)) == {
      'none, nothing': 1234.0, 'demo, host': 250.0}
  progress = '| none | device | zstd | 2 | 3,000 | 1,600 |'  # stderr: today's rows, no header
  assert gpu_check_loader.parse_rows(progress) == [
      {'augmentation': 'none, device, zstd', 'workers': 2, 'slices_per_s': 3000.0,
       'per_core': 1600.0}]


def test_gpu_settings_and_names():
  cmd = gpu_check_throughput.harness_command(
      'python3', dry_run=False, networks=('unet', 'mdanet'), precision='fp32', mode='train',
      batch=16, out_dir=pathlib.Path('r'), time_budget=100, resume=pathlib.Path('r/t.json'),
      label='abc')
  assert cmd[:3] == ['python3', '-m', 'benchmarks.throughput']
  assert cmd[cmd.index('--batch_sizes') + 1] == '16' and cmd[-2:] == ['--resume', 'r/t.json']
  assert cmd[cmd.index('--frameworks') + 1] == 'jax,torch_eager,torch_compile'
  assert gpu_check_env.device_tag('NVIDIA H100 80GB HBM3') == 'h100-80gb-hbm3'
  args = gpu_check.parse_args([])
  assert args.budget_s == 510 and len(args.networks) == 7 and args.det_steps == 100
