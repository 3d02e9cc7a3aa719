"""The training system end to end on the tiny dataset: determinism, resume, sharding, NaN guard.

Runs share one persistent compilation cache (conftest), so each network compiles once per session.
"""

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import orbax.checkpoint as ocp
import pytest

from agmr_jax import main as main_command
from agmr_jax import objectives
from agmr_jax import optim
from agmr_jax import runs
from agmr_jax import sharding as sharding_lib
from agmr_jax import state as state_lib
from agmr_jax.models import MODELS
from agmr_jax.models import layers
from agmr_jax.evaluation import evaluate as evaluate_lib
from agmr_jax.training import loop
from agmr_jax.training import train
from agmr_jax.training import train_step as train_step_lib
from configs import unet
from input_pipeline import pipeline
from tests import conftest


def tiny_config(data_dir, **overrides):
  return conftest.tiny_config(unet, data_dir, **overrides)


def final_params(workdir):
  """The params of the latest checkpoint as numpy (no abstract target needed)."""
  with ocp.CheckpointManager(workdir / 'checkpoints', item_names=('state',)) as mngr:
    step = mngr.latest_step()
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return step, jax.tree.map(np.asarray, restored.state['params'])


def assert_trees_equal(a, b):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def uninterrupted(tiny_built, data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run_a')
  config = tiny_config(data_dir, write_predictions=True)
  summary = train.train_and_evaluate(config, str(workdir))
  return workdir, summary


def test_run_writes_metrics_checkpoints_and_evaluation(uninterrupted, tiny_raw):
  workdir, result = uninterrupted
  rows = runs.read_metrics(workdir)
  assert [r['step'] for r in rows if 'train/loss' in r] == [2, 4, 6]
  assert any('val/dice' in r for r in rows)
  assert (workdir / 'best.json').exists()
  out = workdir / 'eval' / 'test'
  assert (out / 'cases.csv').exists() and (out / 'dsc_boxplot.png').exists()
  assert len(result['rows']) == 2
  assert {'dsc', 'hd95', 'asd'} <= set(result['rows'][0])


def test_same_seed_gives_bitwise_identical_parameters(uninterrupted, data_dir, tmp_path):
  workdir_a, _ = uninterrupted
  config = tiny_config(data_dir, final_eval=False)
  train.train_and_evaluate(config, str(tmp_path))
  step_a, params_a = final_params(workdir_a)
  step_b, params_b = final_params(tmp_path)
  assert step_a == step_b == 6
  assert_trees_equal(params_a, params_b)


def test_stopped_and_resumed_run_is_bitwise_identical(uninterrupted, data_dir, tmp_path):
  workdir_a, _ = uninterrupted
  config = tiny_config(data_dir, final_eval=False, stop_after_steps=4)
  assert train.train_and_evaluate(config, str(tmp_path)) is None
  assert final_params(tmp_path)[0] == 4
  train.train_and_evaluate(config, str(tmp_path))  # resumes at 4 and finishes at 6
  _, params_a = final_params(workdir_a)
  step, params_b = final_params(tmp_path)
  assert step == 6
  assert_trees_equal(params_a, params_b)
  steps = [r['step'] for r in runs.read_metrics(tmp_path) if 'train/loss' in r]
  assert steps == [2, 4, 6]


def test_resuming_under_another_config_is_refused(data_dir, tmp_path, caplog):
  config = tiny_config(data_dir)
  (tmp_path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  changed = tiny_config(data_dir, seed=1, **{'optimizer.learning_rate': 0.5})
  runs.check_resumable(tmp_path, changed)  # no checkpoint yet: a fresh start, nothing to mix
  (tmp_path / 'checkpoints' / '4').mkdir(parents=True)
  with pytest.raises(ValueError, match=r"optimizer.learning_rate: 0.001 -> 0.5, seed: 0 -> 1"):
    runs.check_resumable(tmp_path, changed)
  # Bookkeeping may change; a longer run resumes with a warning about its schedule.
  runs.check_resumable(tmp_path, tiny_config(data_dir, log_every_steps=1, stop_after_steps=2,
                                              **{'data.data_dir': '/elsewhere'}))
  runs.check_resumable(tmp_path, tiny_config(data_dir, num_train_steps=12))
  assert 'num_train_steps 12 (was 6)' in caplog.text


def test_a_run_saved_before_augment_on_existed_resumes_on_the_host(data_dir, tmp_path):
  """A config.json without data.augment_on was trained with host augmentation: resuming it
  under the new default ('device') is refused, under 'host' it is allowed."""
  saved = json.loads(tiny_config(data_dir).to_json_best_effort())
  del saved['data']['augment_on']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  (tmp_path / 'checkpoints' / '4').mkdir(parents=True)
  with pytest.raises(ValueError, match=r"data.augment_on: 'host' -> 'device'"):
    runs.check_resumable(tmp_path, tiny_config(data_dir, **{'data.augment_on': 'device'}))
  runs.check_resumable(tmp_path, tiny_config(data_dir, **{'data.augment_on': 'host'}))


def test_resume_skips_a_damaged_checkpoint_and_still_reaches_the_same_parameters(
    uninterrupted, data_dir, tmp_path, caplog):
  """Stopped at 4 (checkpoints 3 and 4), then step 4's arrays lost: the resume warns naming it,
  restarts from 3 and ends bitwise where the uninterrupted run ended."""
  workdir_a, _ = uninterrupted
  config = tiny_config(data_dir, final_eval=False, stop_after_steps=4)
  train.train_and_evaluate(config, str(tmp_path))
  damaged = tmp_path / 'checkpoints' / '4'
  for path in (damaged / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(b'')
  train.train_and_evaluate(config, str(tmp_path))  # 3 -> 6
  assert f'{damaged}: checkpoint is damaged' in caplog.text
  _, params_a = final_params(workdir_a)
  step, params_b = final_params(tmp_path)
  assert step == 6
  assert_trees_equal(params_a, params_b)


@pytest.mark.parametrize('field, value', [('eval_batch_size', -8), ('eval_batch_size', 0),
                                          ('batch_size', 0), ('log_every_steps', 0)])
def test_non_positive_sizes_are_refused_before_anything_is_written(data_dir, tmp_path, field,
                                                                   value):
  with pytest.raises(ValueError, match=f'config.{field} must be positive, got {value}'):
    train.train_and_evaluate(tiny_config(data_dir, **{field: value}), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_main_refuses_a_changed_resume_in_one_line(data_dir, tmp_path, capsys):
  """agmr-train's main(argv): a resume under another config is one line and exit 1."""
  config = tiny_config(data_dir)
  (tmp_path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  (tmp_path / 'checkpoints' / '4').mkdir(parents=True)
  with pytest.raises(SystemExit) as exit_info:
    main_command.main(['--config=configs/unet.py:tiny', f'--workdir={tmp_path}',
                       f'--config.data.data_dir={data_dir}', '--config.seed=3'])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith(f'error: {tmp_path / "config.json"}: ')
  assert 'seed: 0 -> 3' in err[0]


def test_prediction_files_match_the_source_geometry(uninterrupted, tiny_raw):
  workdir, result = uninterrupted
  for row in result['rows']:
    pred = nib.load(workdir / 'eval' / 'test' / 'predictions' / f'{row["case_id"]}.nii.gz')
    src = nib.load(tiny_raw / 'imagesTr' / f'{row["case_id"]}_0000.nii.gz')
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine)
    assert pred.get_data_dtype() == np.uint8
    assert int(np.asarray(pred.dataobj).sum()) == row['n_pred']


@pytest.fixture(scope='module')
def step_parts(tiny_built):
  """A tiny U-Net, its objective and a fixed batch of 8 real slices."""
  model = MODELS['unet'](features=(4, 8, 16, 32, 64))
  objective = objectives.make_objective('dunet_mix')
  ds = pipeline.SliceDataset(tiny_built)
  batch = pipeline.train_dataset(ds.train_records([0, 1, 2]), batch_size=8, seed=0)[0]
  return model, objective, batch


def _run_steps(model, objective, batch, mesh, n=2, optimizer='adam'):
  cfg = unet.get_config('tiny').optimizer
  cfg.unlock()
  cfg.name = optimizer
  tx = optim.make_optimizer(cfg, steps_per_epoch=10, total_steps=10)
  init_fn = state_lib.make_init(model, (1, *batch['image'].shape[1:]), tx)
  repl, data = sharding_lib.replicated(mesh), sharding_lib.data_sharded(mesh)
  shardings = jax.tree.map(lambda _: repl, jax.eval_shape(init_fn, jax.random.key(0)))
  state = state_lib.init_state(init_fn, jax.random.key(0), shardings)
  step = jax.jit(train_step_lib.make_train_step(model, objective),
                 in_shardings=(shardings, data, repl), out_shardings=(shardings, repl))
  metrics = []
  for _ in range(n):
    state, m = step(state, sharding_lib.global_batch(batch, mesh), jax.random.key(1))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def test_eight_devices_match_one_device(step_parts):
  model, objective, batch = step_parts
  assert jax.device_count() == 8
  # SGD keeps parameter differences proportional to gradient differences; Adam's first steps
  # are ~lr * sign(g), which turns 1e-9 noise on a near-zero gradient into a 2 * lr jump.
  one, m1 = _run_steps(model, objective, batch, sharding_lib.make_mesh(1), optimizer='sgd')
  eight, m8 = _run_steps(model, objective, batch, sharding_lib.make_mesh(8), optimizer='sgd')
  # Only the reduction order differs (per-device partial sums): agreement to float32 rounding.
  np.testing.assert_allclose(m1[-1]['loss'], m8[-1]['loss'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(one.batch_stats), jax.tree.leaves(eight.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_non_finite_loss_skips_the_update_and_names_the_step(step_parts):
  model, objective, batch = step_parts
  bad = dict(batch, image=np.full_like(batch['image'], np.nan))
  state, metrics = _run_steps(model, objective, bad, sharding_lib.make_mesh(1), n=1)
  assert not metrics[0]['finite']
  fresh, _ = _run_steps(model, objective, batch, sharding_lib.make_mesh(1), n=0)
  assert_trees_equal(state.params, fresh.params)
  with pytest.raises(loop.NonFiniteLossError, match='step 7'):
    loop._check_finite([(6, {'finite': True, 'loss': 1.0}), (7, metrics[0])])


def test_bf16_compute_keeps_float32_params(step_parts):
  _, objective, batch = step_parts
  model = MODELS['unet'](features=(4, 8, 16, 32, 64), dtype=jnp.bfloat16)
  state, metrics = _run_steps(model, objective, batch, sharding_lib.make_mesh(1), n=1)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert np.isfinite(metrics[0]['loss'])


def test_bn_momentum_replaces_the_models_momentum(step_parts):
  """bn_momentum=M gives running statistics M r + (1 - M) b, b the batch's statistics."""
  model, objective, batch = step_parts
  tx = optim.make_optimizer(unet.get_config('tiny').optimizer, steps_per_epoch=10, total_steps=10)
  state = jax.jit(state_lib.make_init(model, (1, *batch['image'].shape[1:]), tx))(
      jax.random.key(0))
  stats = {}
  for momentum in (None, 0.9, 0.0):
    step = jax.jit(train_step_lib.make_train_step(model, objective, bn_momentum=momentum,
                                                  model_bn_momentum=layers.BN_MOMENTUM))
    stats[momentum] = jax.device_get(step(state, batch, jax.random.key(1))[0].batch_stats)
  r0 = jax.device_get(state.batch_stats)
  # The default step's update r1 = m r0 + (1 - m) b gives b; momentum 0 must store b itself.
  m = layers.BN_MOMENTUM
  batch_value = jax.tree.map(lambda r, r1: (r1 - m * r) / (1 - m), r0, stats[None])
  leaves = jax.tree.leaves(jax.tree.map(
      lambda b, got: np.abs(np.asarray(got) - b).max(), batch_value, stats[0.0]))
  assert len(leaves) > 10 and max(leaves) < 1e-3
  expected = jax.tree.map(lambda r, b: 0.9 * r + 0.1 * b, r0, batch_value)
  leaves = jax.tree.leaves(jax.tree.map(
      lambda e, got: np.abs(np.asarray(got) - e).max(), expected, stats[0.9]))
  assert max(leaves) < 1e-4
  # And the statistics really moved (the batch is not at the initial mean 0 / variance 1).
  assert max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), r0, stats[0.0]))) > 0.1


def test_sigterm_during_the_test_evaluation_stops_cleanly_and_the_next_start_redoes_it(
    data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, tune_postprocess=False)
  real = evaluate_lib.evaluate_run

  def terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # The handler raises before this returns.
    raise AssertionError('SIGTERM did not stop the evaluation')

  monkeypatch.setattr(evaluate_lib, 'evaluate_run', terminated)
  with pytest.raises(train.Preempted, match='SIGTERM during the post-processing choice'):
    train.train_and_evaluate(config, str(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is not None and not (tmp_path / 'eval').exists()
  steps = [r['step'] for r in runs.read_metrics(tmp_path) if 'train/loss' in r]
  monkeypatch.setattr(evaluate_lib, 'evaluate_run', real)
  summary = train.train_and_evaluate(config, str(tmp_path))  # no step trained, only evaluated
  assert [r['step'] for r in runs.read_metrics(tmp_path) if 'train/loss' in r] == steps
  assert summary['step'] == 6 and (tmp_path / 'eval' / 'test' / 'summary.json').exists()
