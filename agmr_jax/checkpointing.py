"""Orbax checkpoints of the train state together with the Grain iterator.

Two managers under the workdir:
  checkpoints/  the latest few (state + data iterator): what a restarted run resumes from;
  best/         the state with the best validation score (max_to_keep=1), for evaluation.
A kill during an async save leaves `<step>.orbax-checkpoint-tmp`, which latest_step() ignores, so
the previous checkpoint stays usable.
"""

import pathlib
import shutil

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from agmr_jax import optim
from agmr_jax import runs
from agmr_jax import sharding as sharding_lib
from agmr_jax import state as state_lib
from agmr_jax.state import TrainState
from input_pipeline.errors import DataError


def remove_partial_saves(workdir) -> list[pathlib.Path]:
  """Deletes the `*.orbax-checkpoint-tmp*` folders a killed save left (Orbax ignores them; they
  only take space). Call it when a run starts, before anything saves; returns what it removed."""
  removed = []
  for folder in (runs.CHECKPOINTS, runs.BEST):
    for path in sorted((pathlib.Path(workdir) / folder).glob('*.orbax-checkpoint-tmp*')):
      shutil.rmtree(path, ignore_errors=True)
      logging.warning('%s: removed the partial save a stopped run left', path)
      removed.append(path)
  return removed


class Checkpointer:
  """Saves/restores TrainState (+ the data iterator) for one workdir."""

  def __init__(self, workdir: str | pathlib.Path, *, max_to_keep: int = 2,
               async_save: bool = True):
    workdir = pathlib.Path(workdir).absolute()
    self.latest = ocp.CheckpointManager(
        workdir / runs.CHECKPOINTS, item_names=('state', 'data_iter'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save))
    self.best = ocp.CheckpointManager(
        workdir / runs.BEST, item_names=('state',),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m['score'], best_mode='max',
            enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """Whether every process reached the step to save a preemption checkpoint at.

    Only under jax.distributed (False otherwise); call it at every step on every process.
    """
    return self.latest.reached_preemption(step)

  def save(self, step: int, state: TrainState, data_iter, *, force: bool = True) -> bool:
    """Saves (the caller decides when); returns whether it saved."""
    if step in self.latest.all_steps():
      return False
    return self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter)), force=force)

  def restore(self, abstract_state: TrainState, data_iter, step: int | None = None) -> TrainState:
    """Restores the state into `abstract_state`'s shardings and rewinds `data_iter` in place.

    Without a step: the newest checkpoint that reads back; a damaged one (a file lost or cut
    short after its commit) is skipped with a warning naming it, and the previous one is used.
    """
    steps = [step] if step is not None else sorted(self.latest.all_steps(), reverse=True)
    for candidate in steps:
      try:
        restored = self.latest.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
      except Exception as e:  # pylint: disable=broad-except  (any unreadable checkpoint)
        if step is not None or candidate == steps[-1]:
          raise DataError(self.latest.directory / str(candidate),
                          f'checkpoint cannot be read ({type(e).__name__}: {e})') from e
        logging.warning('%s: checkpoint is damaged (%s: %s); resuming from the previous one',
                        self.latest.directory / str(candidate), type(e).__name__,
                        ' '.join(str(e).split())[:200])
        continue
      return restored.state
    raise FileNotFoundError(f'{self.latest.directory}: no checkpoint to restore')

  def save_best(self, step: int, state: TrainState, score: float) -> None:
    if step not in self.best.all_steps():
      self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                     metrics={'score': float(score)}, force=True)

  def best_step(self) -> int | None:
    return self.best.best_step()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def parse_checkpoint(value) -> str | int:
  """'best', 'latest' or a non-negative step number."""
  if value in ('best', 'latest'):
    return value
  try:
    step = int(value)
  except (TypeError, ValueError):
    step = -1
  if step < 0:
    raise ValueError(f"checkpoint must be 'best', 'latest' or a step number, got {value!r}")
  return step


def choose_checkpoint(ckpt: Checkpointer, workdir, which):
  """(manager, step) of 'best' (else latest), 'latest' or a step kept by either manager."""
  if which == 'best' and ckpt.best.best_step() is not None:
    return ckpt.best, ckpt.best.best_step()
  if which in ('best', 'latest'):
    if which == 'best':
      logging.warning('%s has no best checkpoint (no validation split?): using the latest', workdir)
    step = ckpt.latest.latest_step()
    if step is None:
      raise FileNotFoundError(f'{workdir}: no checkpoint to restore')
    return ckpt.latest, step
  for manager in (ckpt.latest, ckpt.best):
    if which in manager.all_steps():
      return manager, which
  kept = sorted(set(ckpt.latest.all_steps()) | set(ckpt.best.all_steps()))
  raise FileNotFoundError(f'{workdir}: no checkpoint at step {which} (kept: {kept or "none"})')


def read_saved_state(workdir, step: int) -> dict:
  """The TrainState saved at `step` as a tree of numpy arrays, whatever topology wrote it (for
  comparing runs bitwise: reproducibility tests and the accelerator check)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = (pathlib.Path(workdir) / runs.CHECKPOINTS / str(step) / 'state').absolute()
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path).item_metadata
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), metadata)
    state = checkpointer.restore(path, target)
  return jax.tree.map(np.asarray, state)


def restore_variables(workdir, config, model, mesh, input_shape, checkpoint) -> tuple[int, dict]:
  """(step, variables) of the chosen checkpoint, replicated over the mesh."""
  workdir = pathlib.Path(workdir)
  if not any((workdir / d).is_dir() for d in (runs.CHECKPOINTS, runs.BEST)):
    raise FileNotFoundError(f'{workdir}: no checkpoints/ or best/ folder, was the run trained?')
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch=1, total_steps=1)
  init_fn = state_lib.make_init(model, input_shape, tx)
  rng = jax.random.key(0)
  shardings = jax.tree.map(lambda _: sharding_lib.replicated(mesh), jax.eval_shape(init_fn, rng))
  abstract = state_lib.abstract_state(init_fn, rng, shardings)
  ckpt = Checkpointer(workdir)
  try:
    manager, step = choose_checkpoint(ckpt, workdir, parse_checkpoint(checkpoint))
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))
    except Exception as e:  # pylint: disable=broad-except  (any unreadable checkpoint)
      raise DataError(manager.directory / str(step),
                      f'checkpoint cannot be read ({type(e).__name__}: '
                      f'{" ".join(str(e).split())[:200]}); choose another with --checkpoint') from e
  finally:
    ckpt.close()
  return step, restored.state.variables
