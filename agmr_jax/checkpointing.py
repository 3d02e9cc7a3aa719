"""Orbax checkpoints of the train state together with the Grain iterator.

Two managers under the workdir:
  checkpoints/  the latest few (state + data iterator): what a restarted run resumes from;
  best/         the state with the best validation score (max_to_keep=1), for evaluation.
A kill during an async save leaves `<step>.orbax-checkpoint-tmp`, which latest_step() ignores, so
the previous checkpoint stays usable.
"""

import pathlib

import grain
import jax
import orbax.checkpoint as ocp

from agmr_jax.train_step import TrainState


class Checkpointer:
  """Saves/restores TrainState (+ the data iterator) for one workdir."""

  def __init__(self, workdir: str | pathlib.Path, *, max_to_keep: int = 2,
               async_save: bool = True):
    workdir = pathlib.Path(workdir).absolute()
    self.latest = ocp.CheckpointManager(
        workdir / 'checkpoints', item_names=('state', 'data_iter'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save))
    self.best = ocp.CheckpointManager(
        workdir / 'best', item_names=('state',),
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
    """Restores the state into `abstract_state`'s shardings and rewinds `data_iter` in place."""
    step = self.latest.latest_step() if step is None else step
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored.state

  def save_best(self, step: int, state: TrainState, score: float) -> None:
    if step not in self.best.all_steps():
      self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                     metrics={'score': float(score)}, force=True)

  def best_step(self) -> int | None:
    return self.best.best_step()

  def restore_state(self, abstract_state: TrainState, which: str = 'best') -> tuple[int, TrainState]:
    """State only, for evaluation: 'best', 'latest' or a step number."""
    manager = self.best if which == 'best' else self.latest
    if which == 'best' and manager.best_step() is None:
      manager, which = self.latest, 'latest'
    if which in ('best', 'latest'):
      step = manager.best_step() if which == 'best' else manager.latest_step()
    else:
      step = int(which)
    if step is None:
      raise FileNotFoundError('no checkpoint to restore')
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return step, restored.state

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def abstract_state(init_fn, rng: jax.Array, sharding) -> TrainState:
  """The state's shapes/dtypes with shardings, without materialising it."""
  shapes = jax.eval_shape(init_fn, rng)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, sharding)
