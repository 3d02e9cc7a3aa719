"""benchmarks/predict_speed.py's main() end to end at toy sizes: its JSON lines, the compute dtype,
one modality per recipe modality, the TTA table, and one line for bad input."""

import json

import jax
import numpy as np
import pytest

from benchmarks import predict_speed

TOY = ['--model', 'unet', '--model_kwargs', '{"features": [4, 8]}', '--size', '16,16',
       '--volume', '24,28,6', '--repeats', '1', '--batch_size', '4']


def _results(out: str) -> list[dict]:
  return [json.loads(line) for line in out.splitlines() if line.startswith('{')]


def test_bfloat16_with_two_tta_settings_side_by_side(capsys):
  assert predict_speed.main(TOY + ['--dtype', 'bfloat16', '--tta_settings', 'none,lr']) == 0
  out = capsys.readouterr().out
  results = _results(out)
  assert [r['tta'] for r in results] == [[], ['lr']]
  for r in results:
    assert r['dtype'] == 'bfloat16' and r['modalities'] == 1 and r['slices'] == 6
    assert r['volume'] == [24, 28, 6] and r['size'] == [16, 16] 
    devices = jax.device_count()  # the batch is rounded up to a multiple of the devices
    assert r['batch_size'] == -(-4 // devices) * devices and r['devices'].startswith(f'{devices} x')
    stages = r['stages_s']
    assert stages['total'] == pytest.approx(
        stages['recipe_forward'] + stages['model'] + stages['inverse_threshold'], abs=2e-3)
  rows = [line for line in out.splitlines() if line.startswith('| none') or
          line.startswith('| lr')]
  assert [row.split('|')[2].strip() for row in rows] == ['1', '2']  # passes per setting
  assert rows[0].split('|')[4].strip() == '1.00'


def test_the_volume_has_every_modality_the_recipe_reads(capsys):
  assert predict_speed.main(TOY + ['--recipe', 'thesis_ct']) == 0
  (result,) = _results(capsys.readouterr().out)
  assert result['modalities'] == 5 and result['dtype'] == 'float32'
  volume = predict_speed.synthetic_volume((6, 7, 8), modalities=3)
  assert volume.shape == (3, 6, 7, 8) and np.array_equal(volume[0], volume[2])
  assert volume[0, 0, 0, 0] == 0 and volume[0, 3, 3, 4] > 0  # zeros outside the head


@pytest.mark.parametrize('argv, code, message', [
    (['--tta_settings', 'none,up'], 2, "unknown flips ['up']"),
    (['--volume', '24,28'], 2, '--volume X,Y,Z'),
    (['--size', 'a,b'], 2, '--size, --volume or --model_kwargs'),
    (['--model_kwargs', '{"nope": 1}'], 1, "unexpected keyword argument 'nope'"),
])
def test_bad_input_is_one_line(capsys, argv, code, message):
  with pytest.raises(SystemExit) as info:
    raise SystemExit(predict_speed.main(TOY + argv))
  assert info.value.code == code
  err = capsys.readouterr().err.strip().splitlines()
  assert message in err[-1] and 'Traceback' not in '\n'.join(err)
