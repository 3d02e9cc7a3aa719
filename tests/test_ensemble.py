"""Ensembles of runs and flip test-time augmentation: the averages are exactly the means."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from agmr_jax import predict as predict_command
from agmr_jax import sharding
from agmr_jax.evaluation import report
from agmr_jax.inference import loading
from agmr_jax.inference import postprocess
from agmr_jax.inference import predict
from agmr_jax.inference import predictor as predictor_lib
from agmr_jax.training import train
from configs import unet
from tests import conftest
from tests.test_evaluate import trained_run


class _Tiny(nn.Module):
  """A position-dependent network: flips change its output, so TTA is visible."""

  @nn.compact
  def __call__(self, x, *, train):
    del train
    h = nn.Conv(2, (3, 3))(x)
    ramp = jnp.linspace(0.0, 1.0, x.shape[1])[None, :, None, None]
    return {'logits': nn.Conv(1, (1, 1))(h) + ramp}


@pytest.fixture(scope='module')
def tiny_predictor():
  model = _Tiny()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 5, 2)), train=False)
  return model, variables, sharding.make_mesh()


def test_tta_passes():
  assert predictor_lib.tta_passes(False) == [()]
  assert predictor_lib.tta_passes(True) == predictor_lib.tta_passes(('lr',)) == [(), (2,)]
  assert predictor_lib.tta_passes(('lr', 'ap')) == [(), (1,), (2,), (1, 2)]
  with pytest.raises(KeyError):
    predictor_lib.tta_passes(('up',))


def test_four_pass_tta_is_the_mean_of_the_flipped_predictions(tiny_predictor):
  model, variables, mesh = tiny_predictor
  images = np.random.default_rng(0).normal(size=(5, 6, 5, 2)).astype(np.float32)
  plain = predictor_lib.Predictor(model, mesh, 8)
  expected = np.mean([np.flip(plain(variables, np.flip(images, axes)), axes) if axes
                      else plain(variables, images)
                      for axes in [(), (1,), (2,), (1, 2)]], axis=0)
  tta = predictor_lib.Predictor(model, mesh, 8, tta=('lr', 'ap'))(variables, images)
  np.testing.assert_allclose(tta, expected, rtol=1e-6, atol=1e-7)
  assert np.abs(tta - plain(variables, images)).max() > 1e-3


@pytest.mark.parametrize('batch_size', [0, -4])
def test_a_non_positive_batch_size_is_refused(tiny_predictor, batch_size):
  model, _, mesh = tiny_predictor
  with pytest.raises(ValueError, match='must be positive'):
    predictor_lib.Predictor(model, mesh, batch_size)


@pytest.fixture(scope='module')
def two_runs(tiny_built, data_dir):
  """The shared tiny run and the same config trained with another seed."""
  del tiny_built
  first, _ = trained_run(data_dir)
  second = data_dir / 'runs' / 'unet_tiny_seed1'
  if not (second / 'eval' / 'test' / 'cases.csv').exists():
    config = conftest.tiny_config(unet, data_dir, seed=1, write_predictions=False)
    train.train_and_evaluate(config, str(second))
  return first, second


def test_ensemble_probabilities_are_the_mean_of_its_members(two_runs, tiny_raw, tmp_path):
  first, second = two_runs
  case = report.read_cases(first / 'eval' / 'test')[0]['case_id']
  (tmp_path / 'in').mkdir()
  shutil.copy(tiny_raw / 'imagesTr' / f'{case}_0000.nii.gz', tmp_path / 'in')
  probs = {}
  for name, workdirs in (('a', first), ('b', second), ('ab', [first, second])):
    predict.predict(tmp_path / 'in', tmp_path / name, workdirs, save_probabilities=True)
    probs[name] = np.asarray(nib.load(tmp_path / name / 'probabilities' /
                                      f'{case}.nii.gz').dataobj)
  assert np.abs(probs['a'] - probs['b']).max() > 1e-4  # Two different members.
  np.testing.assert_allclose(probs['ab'], (probs['a'] + probs['b']) / 2, rtol=1e-6, atol=1e-7)


def test_a_cross_validation_root_is_the_ensemble_of_its_folds(two_runs, tmp_path):
  first, second = two_runs
  root = tmp_path / 'cv'
  root.mkdir()
  (root / 'fold=0').symlink_to(first, target_is_directory=True)
  (root / 'fold=1').symlink_to(second, target_is_directory=True)
  assert loading.expand_members([root]) == [root / 'fold=0', root / 'fold=1']
  assert loading.expand_members([first]) == [first]
  with pytest.raises(ValueError, match='given twice'):
    loading.expand_members([first, first])


def test_members_must_share_the_recipe(two_runs, tmp_path):
  first, _ = two_runs
  other = tmp_path / 'other'
  shutil.copytree(first, other, ignore=shutil.ignore_patterns('eval'))
  recipe = json.loads((other / 'recipe.json').read_text())
  recipe['recipe']['size'] = [16, 16]
  (other / 'recipe.json').write_text(json.dumps(recipe))
  with pytest.raises(ValueError, match=r"recipe field 'size' is \(16, 16\)"):
    loading.resolve_members([first, other])


def test_ensemble_post_processing_is_the_members_common_choice(tmp_path):
  a, b = tmp_path / 'a', tmp_path / 'b'
  a.mkdir()
  b.mkdir()
  postprocess.save(a, postprocess.PostProcess(0.4, 50.0))
  postprocess.save(b, postprocess.PostProcess(0.4, 50.0))
  assert postprocess.load_shared([a, b]) == (postprocess.PostProcess(0.4, 50.0),
                                            "the members' common choice")
  postprocess.save(b, postprocess.PostProcess(0.3, 0.0))
  assert postprocess.load_shared([a, b])[0] == postprocess.PostProcess()


def test_predict_main_takes_repeated_workdirs_and_refuses_a_bad_batch_size(two_runs, tmp_path,
                                                                            capsys):
  first, second = two_runs
  (tmp_path / 'in').mkdir()
  with pytest.raises(SystemExit) as exit_info:
    predict_command.main(['-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'out'),
                          f'--workdir={first}', f'--workdir={second}', '--batch_size=-4'])
  assert exit_info.value.code == 2
  assert '--batch_size' in capsys.readouterr().err.splitlines()[0]
  with pytest.raises(ValueError, match='batch_size must be a positive'):
    predict.predict(tmp_path / 'in', tmp_path / 'out', [first, second], batch_size=0)
  assert not (tmp_path / 'out').exists()


def test_a_bad_file_fails_before_any_network_is_loaded_or_is_skipped(two_runs, tiny_raw,
                                                                     tmp_path, monkeypatch,
                                                                     capsys):
  first, _ = two_runs
  inputs = tmp_path / 'in'
  inputs.mkdir()
  for case in ('tiny_000', 'tiny_001'):
    shutil.copy(tiny_raw / 'imagesTr' / f'{case}_0000.nii.gz', inputs)
  bad = inputs / 'tiny_001_0000.nii.gz'
  bad.write_bytes(bad.read_bytes()[:300])  # truncated: only a full read finds it
  load = loading.load_ensemble

  def never(*args, **kwargs):
    raise AssertionError('a network was loaded before the inputs were checked')

  monkeypatch.setattr(loading, 'load_ensemble', never)
  with pytest.raises(predict.DataError, match='tiny_001_0000.nii.gz'):
    predict.predict(inputs, tmp_path / 'out', first)
  assert not (tmp_path / 'out').exists()
  monkeypatch.setattr(loading, 'load_ensemble', load)
  with pytest.raises(SystemExit) as exit_info:
    predict_command.main(['-i', str(inputs), '-o', str(tmp_path / 'out'), f'--workdir={first}',
                          '--skip_bad'])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.splitlines()[-1]
  assert err.startswith(f'error: {inputs}: 1 bad case(s) skipped, 1 predicted') and 'tiny_001' in err
  assert sorted(p.name for p in (tmp_path / 'out').glob('*.nii.gz')) == ['tiny_000.nii.gz']
