"""The throughput harness's bookkeeping: presets, peaks, ratios, resume, imports (no timing)."""

import os
import pathlib
import subprocess
import sys

import numpy as np

from benchmarks import throughput
from benchmarks import throughput_common as common
from benchmarks import throughput_report as report


def test_smoke_preset_and_flags():
  args = throughput.parse_args(['--smoke', '--networks', 'dunet', '--precisions', 'bf16'])
  assert (args.batch_sizes, args.warmup, args.repeats, args.steps) == ((2,), 0, 3, 1)
  configs = [c for row in throughput.rows(args) for c in row]
  assert [c['framework'] for c in configs[:3]] == ['jax', 'torch_eager', 'torch_compile']
  assert {c['mode'] for c in configs} == {'train', 'infer'} and len(configs) == 6
  assert configs[1]['variant'] == 'eager' and configs[1]['layout'] == 'channels_last'


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
          'first_step_s': 1.0, 'compile_s': 2.0, 'versions': {}, **extra}


def test_markdown_ratio_and_mfu(tmp_path: pathlib.Path):
  runs = [_run('jax', 10.0, flops_per_step=989.4e9), _run('torch_eager', 15.0),
          {**_run('torch_compile', 1.0), 'status': 'error', 'error': 'inductor failed'}]
  results = {'meta': {'date': 'd', 'smoke': False, 'label': '', 'argv': [],
                      'settings': {}, 'flop_convention': 'x'}, 'runs': runs}
  text = report.markdown(results)
  row = next(l for l in text.splitlines() if l.startswith('| unet'))
  cells = [c.strip() for c in row.strip('|').split('|')]
  assert cells[4:10] == ['10.0', '15.0', '-', '800.0', '1.50', '-']
  assert cells[11:13] == ['10.0%', '6.7%']  # 989.4 GFLOP in 10 ms on a 989.4 TFLOP/s peak.
  assert 'inductor failed' in text and 'SMOKE' not in text
  stem = report.write(results, tmp_path, __import__('datetime').datetime(2025, 1, 2, 3, 4),
                      smoke=False)
  assert stem.name == 'throughput-h100-80gb-hbm3-20250102-0304'
  assert stem.with_suffix('.json').exists() and stem.with_suffix('.md').exists()


def test_resume_runs_only_missing_configurations(tmp_path: pathlib.Path, monkeypatch):
  spawned = []

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
  results = __import__('json').loads(first.read_text())
  assert len(results['runs']) == 4 and len(results['meta']['resumed']) == 1
  text = first.with_suffix('.md').read_text()
  assert 'Continued' in text
  assert 'CPU SMOKE TEST on `cpu`' in text  # a CPU table says so and names the device.


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
