"""The throughput harness's bookkeeping: presets, peaks, ratios (no framework runs here)."""

import pathlib

import numpy as np

from benchmarks import throughput
from benchmarks import throughput_common as common
from benchmarks import throughput_report as report


def test_smoke_preset_and_flags():
  args = throughput.parse_args(['--smoke', '--networks', 'dunet', '--precisions', 'bf16'])
  assert (args.batch_sizes, args.warmup, args.repeats, args.steps) == ((1,), 0, 3, 1)
  configs = list(throughput.configurations(args))
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
