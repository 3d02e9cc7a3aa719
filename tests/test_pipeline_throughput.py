"""benchmarks/pipeline_throughput.py end to end at toy scale, and its tables from hand-made costs."""

import pytest

from benchmarks import gpu_check_loader
from benchmarks import pipeline_throughput
from input_pipeline import augment


def test_main_prints_and_writes_the_loader_table(tmp_path, capsys):
  out = tmp_path / 'table.md'
  argv = [f'--data_dir={tmp_path / "data"}', '--dataset=synthetic_tiny', '--recipe=tiny_2p5d',
          '--batches=2', '--workers=0', '--networks=', f'--out={out}']
  assert pipeline_throughput.main(argv) == 0
  text = out.read_text()
  assert capsys.readouterr().out.strip().endswith(text.strip())  # (TFDS prints its build first)
  assert 'synthetic_tiny 32x32x4 records' in text.splitlines()[0]
  rows = gpu_check_loader.parse_rows(text)
  presets = len(augment.AUGMENT_PRESETS)
  assert len(rows) == 2 + 2 * presets - 1  # former + zstd, then host and device per preset
  assert rows[0]['augmentation'] == 'former, nothing (former TFDS reader), zstd'
  assert all(r['slices_per_s'] > 0 and r['per_core'] > 0 and r['workers'] == 0 for r in rows)
  assert text.count('| former |') == 1  # Each row once (progress rows go to stderr).
  assert 'Records on disk: none ' in text and ', zstd ' in text
  costs = text.split('| per record (fold 0, one thread) | CPU us |')[1]
  for what in ('read, none records', 'read, zstd records', 'decode, TFDS generic',
               'decode, image and mask into a batch row'):
    assert f'| {what}' in costs, what


def test_bad_arguments_are_one_usage_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    pipeline_throughput.main([f'--data_dir={tmp_path}', '--batches=0'])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert 'error: --batches and --step_repeats take a positive number' in err
  assert not (tmp_path / 'none').exists()


def test_step_and_demand_tables_from_hand_made_costs():
  costs = {'unet': {'plain': 2.0, 'augmented': 2.2, 'alone': {'demo': 0.002},
                    'pairs': [1.0, 1.05, 1.2], 'flops_per_slice': 45e9}}
  step = pipeline_throughput.step_table(costs, 2)
  assert step[2] == ('| unet | 2.00 | 2.20 | +10.0% | +5.0% (+0.0% to +20.0%, 3 pairs) | '
                     '2.0 ms, 0.10% |')
  best = {('none', 'device'): 4000.0, ('demo', 'device'): 3000.0, ('demo', 'host'): 500.0}
  demand = pipeline_throughput.demand_table(costs, best)
  slices = 0.35 * pipeline_throughput.common.PEAK_FLOPS['H100 SXM']['bf16'] / 45e9
  assert demand[2] == (f'| unet | 45.0 | {slices:,.0f} | {slices / 3000:.1f} | '
                       f'{slices / 500:.1f} |')


def test_one_codec_leaves_out_the_zstd_rows(tmp_path, capsys):
  argv = [f'--data_dir={tmp_path}', '--dataset=synthetic_tiny', '--recipe=tiny_2p5d',
          '--batches=1', '--workers=0', '--networks=', '--codecs=none']
  assert pipeline_throughput.main(argv) == 0
  rows = gpu_check_loader.parse_rows(capsys.readouterr().out)
  assert len(rows) == 2 * len(augment.AUGMENT_PRESETS) - 1
  assert not (tmp_path / 'zstd').exists()
  with pytest.raises(SystemExit) as exit_info:
    pipeline_throughput.main(argv[:-1] + ['--codecs=zstd'])
  assert exit_info.value.code == 2
