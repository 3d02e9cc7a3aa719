"""The throughput harness's bookkeeping: presets, peaks, ratios, resume, commits, memory,
profiles, imports; one real JAX worker run at toy scale."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import throughput
from benchmarks import throughput_common as common
from benchmarks import throughput_jax
from benchmarks import throughput_report as report


def test_smoke_preset_and_flags():
  args = throughput.parse_args(['--smoke', '--networks', 'dunet', '--precisions', 'bf16'])
  assert (args.batch_sizes, args.warmup, args.repeats, args.steps) == ((2,), 0, 3, 1)
  configs = [c for row in throughput.rows(args) for c in row]
  assert [c['framework'] for c in configs[:3]] == ['jax', 'torch_eager', 'torch_compile']
  assert {c['mode'] for c in configs} == {'train', 'infer'} and len(configs) == 6
  assert configs[1]['variant'] == 'eager' and configs[1]['layout'] == 'channels_last'
  assert not any('profile_dir' in c for c in configs)
  args = throughput.parse_args(['--smoke', '--networks', 'dunet', '--profile', '/tmp/p'])
  profiled = [c for row in throughput.rows(args) for c in row if 'profile_dir' in c]
  assert [(c['framework'], c['mode'], c['profile_dir']) for c in profiled] == [
      ('jax', 'train', '/tmp/p')] * 2  # fp32 and bf16; the worker's 'profile' is its result.


def test_peak_table_lookup():
  assert common.peak_flops('NVIDIA H100 80GB HBM3', 'bf16') == (989.4e12, 'H100 SXM')
  assert common.peak_flops('NVIDIA H100 PCIe', 'fp32')[1] == 'H100 PCIe'
  assert common.peak_flops('NVIDIA H200', 'bf16')[1] == 'H200 SXM'
  assert common.peak_flops('cpu', 'bf16') == (None, None)


def test_batch_is_fixed_and_shaped():
  a = common.make_batch(common.NETWORKS['dunet'], 3, seed=5)
  b = common.make_batch(common.NETWORKS['dunet'], 3, seed=5)
  assert a['image'].shape == (3, 192, 192, 4) and a['mask'].shape == (3, 192, 192)
  assert a['mask'].dtype == np.uint8 and 0.02 < a['mask'].mean() < 0.08
  np.testing.assert_array_equal(a['image'], b['image'])


def _run(framework, ms, device='NVIDIA H100 80GB HBM3', **extra):
  return {'network': 'unet', 'precision': 'bf16', 'batch': 8, 'mode': 'train',
          'framework': framework, 'status': 'ok', 'step_ms': ms, 'images_per_s': 8e3 / ms,
          'device': device, 'platform': 'gpu', 'peak_memory_bytes': 2**30, 'check': 0.5,
          'first_step_s': 1.0, 'compile_s': 2.0, 'versions': {}, 'commit': 'abc1234', **extra}


def test_markdown_ratio_and_mfu(tmp_path: pathlib.Path):
  runs = [_run('jax', 10.0, flops_per_step=989.4e9), _run('torch_eager', 15.0),
          {**_run('torch_compile', 1.0), 'status': 'error', 'error': 'inductor failed'}]
  results = {'meta': {'date': 'd', 'smoke': False, 'label': '', 'argv': [],
                      'settings': {}, 'flop_convention': 'x'}, 'runs': runs}
  text = report.markdown(results)
  row = next(l for l in text.splitlines() if l.startswith('| unet'))
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[4:10] == ['10.0', '15.0', '-', '800.0', '1.50', '-']
  assert cells[14] == 'abc1234'  # the commit the row was measured at.
  assert cells[11:13] == ['10.0%', '6.7%']  # 989.4 GFLOP in 10 ms on a 989.4 TFLOP/s peak.
  assert 'inductor failed' in text and 'SMOKE' not in text
  stem = report.write(results, tmp_path, __import__('datetime').datetime(2025, 1, 2, 3, 4),
                      smoke=False)
  assert stem.name == 'throughput-h100-80gb-hbm3-20250102-0304'
  assert stem.with_suffix('.json').exists() and stem.with_suffix('.md').exists()


def test_resume_runs_only_missing_configurations(tmp_path: pathlib.Path, monkeypatch):
  spawned = []
  monkeypatch.setattr(common, 'git_commit', lambda repo: 'abc1234')

  def fake_spawn(config, timeout):
    del timeout
    spawned.append((config['batch'], config['framework']))
    return {**_run(config['framework'], 10.0 * config['batch'], device='cpu'),
            'platform': 'cpu', 'batch': config['batch'], 'mode': config['mode']}

  monkeypatch.setattr(throughput, 'spawn', fake_spawn)
  common_flags = ['--networks', 'unet', '--precisions', 'bf16', '--modes', 'infer',
                  '--frameworks', 'jax,torch_eager', '--out_dir', str(tmp_path)]
  throughput.main(common_flags + ['--batch_sizes', '2'])
  (first,) = tmp_path.glob('*.json')
  assert first.name.startswith('throughput-cpu-') and spawned == [(2, 'jax'), (2, 'torch_eager')]
  throughput.main(common_flags + ['--batch_sizes', '2,4', '--resume', str(first)])
  assert spawned[2:] == [(4, 'jax'), (4, 'torch_eager')]  # batch 2 was not measured again.
  results = json.loads(first.read_text())
  assert len(results['runs']) == 4 and len(results['meta']['resumed']) == 1
  assert {r['commit'] for r in results['runs']} == {'abc1234'}
  text = first.with_suffix('.md').read_text()
  assert 'Continued' in text
  assert 'CPU measurement on `cpu`' in text  # a CPU table says so and names the device.
  assert 'SMOKE' not in text  # only --smoke runs are smoke tests.


def test_resume_refuses_runs_from_another_commit(tmp_path: pathlib.Path, monkeypatch, capsys):
  monkeypatch.setattr(throughput, 'spawn', lambda config, timeout: {
      **_run(config['framework'], 10.0, device='cpu'), 'platform': 'cpu'})
  flags = ['--networks', 'unet', '--precisions', 'bf16', '--modes', 'train', '--batch_sizes',
           '8', '--frameworks', 'jax', '--out_dir', str(tmp_path)]
  monkeypatch.setattr(common, 'git_commit', lambda repo: 'abc1234')
  throughput.main(flags)
  (path,) = tmp_path.glob('*.json')
  monkeypatch.setattr(common, 'git_commit', lambda repo: 'def5678+dirty')
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    throughput.main(flags + ['--batch_sizes', '4', '--resume', str(path)])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and '\n' not in err
  assert 'abc1234' in err and 'def5678+dirty' in err and '--allow_mixed_commits' in err
  assert len(json.loads(path.read_text())['runs']) == 1  # nothing was added.
  throughput.main(flags + ['--batch_sizes', '4', '--resume', str(path), '--allow_mixed_commits'])
  runs = json.loads(path.read_text())['runs']
  assert [r['commit'] for r in runs] == ['abc1234', 'def5678+dirty']
  assert 'abc1234, def5678+dirty' not in path.with_suffix('.md').read_text()  # one per row.


def test_git_commit_is_a_short_hash_with_a_dirty_mark():
  commit = common.git_commit(pathlib.Path(__file__).resolve().parents[1])
  head = commit.removesuffix('+dirty')
  assert commit == 'unknown' or (7 <= len(head) <= 12 and int(head, 16) >= 0)


def test_memory_table_and_legend():
  xla = {'argument': 3 * 2**20, 'output': 2 * 2**20, 'alias': 2**20, 'temp': 5 * 2**20}
  runs = [_run('jax', 10.0, xla_memory_bytes=xla), _run('torch_eager', 15.0)]
  text = report.markdown({'meta': {'date': 'd', 'smoke': False, 'label': '', 'argv': [],
                                   'settings': {}, 'flop_convention': 'x'}, 'runs': runs})
  memory = text.split('## Memory')[1]
  assert 'VmHWM' in memory and 'memory_analysis()' in memory and 'max_memory_allocated' in memory
  row = next(l for l in memory.splitlines() if l.startswith('| unet'))
  assert [c.strip() for c in row.strip('|').split('|')][4:] == [
      '1024', '1024', '-', '3', '2', '1', '5', '8']


def test_op_self_times_subtract_nested_ops_per_thread():
  def op(name, ts, dur, tid=1):
    return {'ph': 'X', 'tid': tid, 'ts': ts, 'dur': dur, 'name': name,
            'args': {'hlo_op': name}}
  events = [op('while', 0, 100), op('conv', 10, 30), op('conv', 50, 20), op('add', 120, 5),
            op('conv', 0, 40, tid=2), {'ph': 'X', 'tid': 1, 'ts': 0, 'dur': 500, 'name': 'py'}]
  assert throughput_jax.op_self_times(events) == {
      'while': [50, 1], 'conv': [90, 3], 'add': [5, 1]}


def test_hlo_descriptions_name_the_op_window_and_source():
  text = ('  %convolution.3 = f32[2,8,8,4]{3,2,1,0} convolution(f32[2,4,4,4]{3,2,1,0} %p, '
          'f32[2,2,4,4]{3,2,1,0} %k), window={size=2x2 pad=1_1x1_1 lhs_dilate=2x2}, '
          'dim_labels=b01f_01io->b01f, metadata={op_name="jit(step)/transpose(jvp(up))/conv"}\n'
          'ROOT fusion.1 = f32[8]{0} fusion(f32[8]{0} %a), kind=kLoop, calls=%fused\n')
  described = throughput_jax.hlo_descriptions(text)
  assert described['convolution.3'] == ('convolution f32[2,8,8,4] window={size=2x2 pad=1_1x1_1 '
                                        'lhs_dilate=2x2} jit(step)/transpose(jvp(up))/conv')
  assert described['fusion.1'] == 'fusion f32[8]'
  fused = ('%fused_computation.2 (p0: f32[4,16,16,2], p1: f32[16,16,2,8]) -> f32[4,3,3,8] {\n'
           '  ROOT %convolution.1 = f32[4,3,3,8]{3,2,1,0} convolution(%p0, %p1), '
           'window={size=16x16 pad=1_1x1_1}, dim_labels=b01f_01io->b01f\n}\n'
           '%ynn_fusion.2 = f32[4,3,3,8]{3,2,1,0} fusion(%a, %b), kind=kCustom, '
           'calls=%fused_computation.2, metadata={op_name="jit(step)/transpose(jvp(M))/c"}\n')
  assert throughput_jax.hlo_descriptions(fused)['ynn_fusion.2'] == (
      'fusion[convolution window={size=16x16 pad=1_1x1_1}] f32[4,3,3,8] '
      'jit(step)/transpose(jvp(M))/c')


def test_op_kind_tells_forward_from_gradient_convolutions():
  kind = throughput_jax.op_kind
  assert kind('fusion[convolution window={size=3x3 pad=1_1x1_1}] f32[2,8,8,4] jit(s)/jvp(M)/c') == (
      'forward conv')
  assert kind('fusion[convolution window={size=224x176 pad=1_1x1_1}] f32[32,3,3,128] '
              'jit(s)/transpose(jvp(M))/c') == 'kernel-gradient conv'
  assert kind('dot f32[64,2,2,32] jit(s)/transpose(jvp(M))/up') == 'kernel-gradient conv'
  assert kind('fusion[convolution window={size=3x3 pad=1_1x1_1}] f32[2,96,96,64] '
              'jit(s)/transpose(jvp(M))/c') == 'input-gradient conv'
  assert kind('fusion[copy] f32[3,3,512,2048]') == 'layout copy'
  assert kind('fusion[add] f32[2,8]') == kind('') == 'other'


def test_jax_worker_measures_memory_and_profiles_a_toy_unet(tmp_path: pathlib.Path, monkeypatch):
  """One real worker run (a 16x16 U-Net of widths 4, 8): XLA's memory figures, the host peak
  after compiling, and a profile whose top ops are named XLA ops of the step."""
  spec = common.NetworkSpec((16, 16, 4), 'dunet_mix', {'alpha': 0.48, 'gamma': 1.1},
                            model_kwargs={'features': (4, 8), 'dropout_levels': ()})
  monkeypatch.setitem(common.NETWORKS, 'unet', spec)
  record = throughput_jax.run({
      'network': 'unet', 'precision': 'fp32', 'batch': 2, 'mode': 'train', 'seed': 0,
      'warmup': 0, 'repeats': 2, 'steps': 1, 'profile_dir': str(tmp_path), 'profile_steps': 1})
  xla = record['xla_memory_bytes']
  assert xla['argument'] > 0 and xla['temp'] > 0 and xla['alias'] > 0  # the state is donated.
  assert 'reset after compiling' in record['peak_memory_kind'] and len(record['step_ms_runs']) == 2
  profile = record['profile']
  assert pathlib.Path(profile['trace']).is_file() and 0 < len(profile['top_ops']) <= 10
  assert profile['top_ops'][0]['hlo'] and profile['op_ms_per_step'] > 0
  assert 'kernel-gradient conv' in profile['ms_per_step_by_kind']
  shares = [o['share'] for o in profile['top_ops']]
  assert shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
  lines = report.profile_lines({**record, 'status': 'ok'})
  assert len(lines) == 2 + len(profile['top_ops'])


GPU_MACHINE_MISSING = ('grain', 'nibabel', 'ml_collections', 'tensorflow_datasets', 'tensorflow')


def test_jax_worker_imports_only_what_the_gpu_machines_have():
  """The GPU machines lack grain, nibabel, ml_collections, TFDS: the worker must not need them."""
  blocker = (
      'import importlib.abc, sys\n'
      'class Block(importlib.abc.MetaPathFinder):\n'
      '  def find_spec(self, name, path=None, target=None):\n'
      f'    if name.split(".")[0] in {GPU_MACHINE_MISSING!r}:\n'
      '      raise ImportError(f"{name} is not on the GPU machines")\n'
      'sys.meta_path.insert(0, Block())\n'
      'from benchmarks import throughput, throughput_jax\n'
      'from agmr_jax import models, objectives, state\n'
      'from agmr_jax.inference import predictor\n'
      'from agmr_jax.training import train_step\n')
  repo = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run([sys.executable, '-c', blocker], cwd=repo, capture_output=True,
                        text=True, env={**os.environ, 'PYTHONPATH': str(repo),
                                        'JAX_PLATFORMS': 'cpu'}, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
