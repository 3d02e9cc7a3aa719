"""Reproducibility: a run killed and restarted ends bitwise equal to an uninterrupted one.

One workdir goes through SIGKILL at a random step, SIGKILL while a checkpoint is being written,
SIGTERM (which must leave a checkpoint at the step reached and exit with status 75) and a final
run to the end; its state must equal, bit for bit, the state of a run that was never stopped.
Each restart must resume from the checkpoint the interruption left (the log says from which
step), so the steps after it are computed twice. The first interrupted run checkpoints
synchronously: every 3 steps a checkpoint is committed before the next step starts, so a SIGKILL
after step 4..7 always lands after a committed checkpoint (an asynchronous commit may still be in
flight at such a kill, and the restart would then begin from scratch). The other runs write
asynchronously, as real configs do; the mode changes when a checkpoint lands, not what is
computed. All runs use `config.deterministic` (its XLA flags are accepted on CPU) and the
training program of tests/test_distributed.py (one compilation for both); tests/test_train.py
covers resuming with dropout and Adam.

Run as a module (`python -m tests.test_kill_resume <agmr_jax.main args>`) this file is
agmr_jax.main with Orbax's checkpoint commit held open, so the test can kill mid-write.
"""

import asyncio
import importlib
import os
import pathlib
import random
import re
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from agmr_jax import runtime
from agmr_jax.models import MODELS
from agmr_jax.models import layers
from input_pipeline import recipes
from tests import launch_helpers as helpers

HOLD_COMMIT_ENV = 'AGMR_TEST_HOLD_COMMIT'  # Path of a marker file written when the commit is held.
TOTAL_STEPS = 12
OVERRIDES = {
    **helpers.SHARED_OVERRIDES,
    'final_eval': False, 'data.val_fold': -1, 'num_train_steps': TOTAL_STEPS,
    'log_every_steps': 1, 'checkpoint_every_steps': 3, 'async_checkpoints': True,
}


def _hold_checkpoint_commit(marker: pathlib.Path) -> None:
  """Makes the first commit of a 'checkpoints/<step>' write its step to `marker` and hang."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  commit = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self):
    final = self._final_path  # pylint: disable=protected-access
    if final.parent.name == 'checkpoints' and not marker.exists():
      marker.write_text(final.name)
      await asyncio.sleep(3600)  # Data written, not yet renamed into place: the test kills here.
    return await commit(self)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize


def _run(run_dir, data_dir, env, log, module='agmr_jax.main', **overrides):
  args = helpers.main_args(data_dir, run_dir, **{**OVERRIDES, **overrides})
  return helpers.start_main(args, env, log, module)


def _steps_at_least(workdir, step):
  return lambda: max(helpers.logged_steps(workdir), default=0) >= step


def _kill(proc):
  proc.kill()
  proc.wait()


def _resumed_from(log) -> int | None:
  found = re.search(r'Resumed from step (\d+)', log.read_text())
  return int(found.group(1)) if found else None


def test_killed_and_terminated_run_resumes_bitwise(tiny_built, data_dir, tmp_path):
  env = helpers.child_env(4)
  ref_dir, run_dir = tmp_path / 'uninterrupted', tmp_path / 'interrupted'
  ref_log, logs = tmp_path / 'uninterrupted.log', [tmp_path / f'run{i}.log' for i in range(1, 5)]
  reference = _run(ref_dir, data_dir, env, ref_log)
  # Once the reference has compiled, every other run finds its programs in the cache.
  helpers.wait_for(_steps_at_least(ref_dir, 1), [reference], ref_log)
  kill_step = int(os.environ.get('AGMR_KILL_STEP', random.SystemRandom().randint(4, 7)))
  context = f'(first SIGKILL after step {kill_step}; AGMR_KILL_STEP={kill_step} replays it)'

  # 1. SIGKILL at a random step, after at least one committed checkpoint.
  proc = _run(run_dir, data_dir, env, logs[0], async_checkpoints='false')
  helpers.wait_for(_steps_at_least(run_dir, kill_step), [proc], logs[0], what=f'step {kill_step}')
  _kill(proc)
  committed = helpers.checkpoint_steps(run_dir)
  assert committed and committed[-1] >= 3, context

  # 2. SIGKILL while the next checkpoint is being written (data on disk, commit not done).
  marker = tmp_path / 'commit_held'
  proc = _run(run_dir, data_dir, dict(env, **{HOLD_COMMIT_ENV: str(marker)}), logs[1],
              module='tests.test_kill_resume')
  helpers.wait_for(marker.exists, [proc], logs[1], what='a checkpoint write')
  in_flight = list((run_dir / 'checkpoints').glob(f'{marker.read_text()}.orbax-checkpoint-tmp*'))
  _kill(proc)
  assert _resumed_from(logs[1]) == committed[-1], context
  assert in_flight, f'no unfinished checkpoint directory at the kill {context}'
  assert int(marker.read_text()) > committed[-1], context
  assert helpers.checkpoint_steps(run_dir) == committed, context  # The held one never counts.

  # 3. SIGTERM: a checkpoint at the step reached, exit status 75.
  logged_before = len(helpers.logged_steps(run_dir))
  proc = _run(run_dir, data_dir, env, logs[2])
  helpers.wait_for(lambda: len(helpers.logged_steps(run_dir)) > logged_before, [proc], logs[2],
                   what='a step after the restart')
  proc.send_signal(signal.SIGTERM)
  assert helpers.wait(proc, logs[2]) == runtime.EXIT_PREEMPTED, helpers.tail(logs[2])
  assert _resumed_from(logs[2]) == committed[-1], context
  assert 'SIGTERM: saving a checkpoint and stopping' in logs[2].read_text()
  assert 'removed the partial save a stopped run left' in logs[2].read_text()  # step 2's
  assert not [p for p in in_flight if p.exists()], context
  stopped_at = helpers.logged_steps(run_dir)[-1]
  assert committed[-1] < stopped_at < TOTAL_STEPS, context
  assert helpers.checkpoint_steps(run_dir)[-1] == stopped_at, context

  # 4. To the end.
  assert helpers.wait(_run(run_dir, data_dir, env, logs[3]), logs[3]) == 0, helpers.tail(logs[3])
  assert _resumed_from(logs[3]) == stopped_at, context
  assert helpers.wait(reference, ref_log) == 0, helpers.tail(ref_log)
  assert 'deterministic: XLA_FLAGS=' in ref_log.read_text()
  step_a, state_a = helpers.read_state(ref_dir)
  step_b, state_b = helpers.read_state(run_dir)
  assert step_a == step_b == TOTAL_STEPS, context
  helpers.assert_trees_equal(state_a, state_b)  # params, batch_stats, optimizer state, step
  # The interrupted workdir computed some steps twice or more: equality is not by skipping them.
  assert len(helpers.logged_steps(run_dir)) > TOTAL_STEPS, context


def test_set_xla_flags_adds_the_deterministic_flags_once(monkeypatch):
  monkeypatch.setattr(runtime, '_backends_initialized', lambda: False)  # As before JAX starts.
  environ = {'XLA_FLAGS': '--xla_foo=1'}
  assert runtime.set_xla_flags(False, environ) == []
  assert environ == {'XLA_FLAGS': '--xla_foo=1'}
  assert runtime.set_xla_flags(True, environ) == list(runtime.DETERMINISTIC_XLA_FLAGS)
  assert environ['XLA_FLAGS'].split() == ['--xla_foo=1', *runtime.DETERMINISTIC_XLA_FLAGS]
  assert runtime.set_xla_flags(True, environ) == []


def test_set_xla_flags_refuses_once_jax_has_started():
  jax.devices()  # This process's backends exist, without the flags.
  with pytest.raises(RuntimeError, match='before JAX initialises'):
    runtime.set_xla_flags(True, {})


def _lowered_gradient(pool, x) -> str:
  return jax.jit(jax.grad(lambda v: jnp.sum(pool(v) ** 2))).lower(x).as_text()


def test_pooling_gradient_has_no_select_and_scatter():
  # --xla_gpu_deterministic_ops rejects select-and-scatter (no deterministic GPU kernel): the
  # gradient of a windowed max-pool has one, the reshape+max pool's gradient does not. The
  # primitive that lowers to it is already visible in the jaxpr (cheaper than lowering).
  x = jnp.zeros((1, 8, 8, 2))
  windowed = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
  assert 'select_and_scatter' in _lowered_gradient(windowed, x)
  assert 'select_and_scatter' in str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(windowed(v))))(x))
  assert 'select_and_scatter' not in _lowered_gradient(layers.max_pool_2x2, x)


CONFIGS = sorted(f.stem for f in (helpers.REPO / 'configs').glob('*.py')
                 if f.stem not in ('__init__', 'common'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_model_gradient_has_no_select_and_scatter(name):
  """Every config's network trains under `deterministic` on GPU (tracing only, no compile)."""
  config = importlib.import_module(f'configs.{name}').get_config('tiny')
  recipe = recipes.RECIPES[config.data.recipe]
  kwargs = dict(config.model_kwargs.to_dict())
  if recipe.groups and 'groups' in MODELS[config.model].__dataclass_fields__:
    kwargs.setdefault('groups', tuple(recipe.groups))
  model = MODELS[config.model](**kwargs)
  x = jnp.zeros((2, *recipe.size, recipe.num_channels))
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, x, train=False))

  def loss(params, batch_stats):
    outputs, _ = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                             rngs={'dropout': rngs['dropout']}, mutable=['batch_stats'])
    return sum(jnp.sum(jnp.asarray(o, jnp.float32)) for o in jax.tree.leaves(outputs))

  jaxpr = jax.make_jaxpr(jax.grad(loss))(variables['params'], variables.get('batch_stats', {}))
  assert 'select_and_scatter' not in str(jaxpr)  # Nested jaxprs (remat, scan) print inline.


if __name__ == '__main__':
  from agmr_jax import cli  # pylint: disable=g-import-not-at-top
  from agmr_jax import main  # pylint: disable=g-import-not-at-top
  if os.environ.get(HOLD_COMMIT_ENV):
    _hold_checkpoint_commit(pathlib.Path(os.environ[HOLD_COMMIT_ENV]))
  cli.entry(main.main)
