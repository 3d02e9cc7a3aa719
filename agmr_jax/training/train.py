"""train_and_evaluate(config, workdir): train (resuming from the workdir), then evaluate.

A run started on a workdir that holds a checkpoint resumes from it -- the data iterator included
-- and reaches the same parameters an uninterrupted run would. SIGTERM (under jax.distributed: a
preemption notice to any process) saves a checkpoint at the current step and raises Preempted.
After the last step the post-processing is chosen on validation and the test split evaluated.
"""

import contextlib
import pathlib
import signal
import threading
import time

import jax
import ml_collections
from absl import logging

from agmr_jax import data
from agmr_jax import runs
from agmr_jax import runtime
from agmr_jax.evaluation import evaluate as evaluate_lib
from agmr_jax.evaluation import tune
from agmr_jax.inference import postprocess
from agmr_jax.training import config_checks
from agmr_jax.training import loop
from agmr_jax.training import setup as setup_lib
from agmr_jax.training import writer


class Preempted(Exception):
  """SIGTERM or a preemption notice stopped training; a checkpoint at the step reached is saved."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains (resuming if possible), then evaluates the test split; returns its summary."""
  workdir = pathlib.Path(workdir)
  config_checks.check(config)
  setup_lib.check_config(config)
  if workdir.exists() and not workdir.is_dir():
    raise ValueError(f'{workdir}: --workdir is a file, not a folder')
  workdir.mkdir(parents=True, exist_ok=True)
  runtime.set_xla_flags(config.get('deterministic', False))  # Raises if JAX started without them.
  runs.check_resumable(workdir, config)
  if jax.process_index() == 0:
    runs.write_config(workdir, config)
  writer.log_topology()
  run = setup_lib.setup(config, workdir)
  if runs.has_checkpoint(workdir):
    data.check_same_records(workdir, run.dataset)  # a resume on changed data: say so
  if jax.process_index() == 0:
    runs.write_recipe(workdir, data.recipe_of(run.dataset), data.records_identity(run.dataset))
  logging.info('%s: %d train slices/epoch, %d steps/epoch, %d steps', config.model,
               run.steps_per_epoch * config.batch_size, run.steps_per_epoch, run.total_steps)
  t0 = time.perf_counter()
  step = loop.train_loop(run)
  if hasattr(run.data_iter, 'close'):
    run.data_iter.close()
  logging.info('Training stopped at step %d after %.0f s', step, time.perf_counter() - t0)
  if run.preempted:
    raise Preempted(f'preempted at step {step}: checkpoint saved in {run.workdir}; run the same '
                    'command again to resume')
  if step < run.total_steps or not config.final_eval:
    return None
  with _sigterm_stops('the post-processing choice and the test evaluation'):
    chosen = tune.tune_postprocess(run.workdir, config) if config.tune_postprocess else None
    post = (postprocess.PostProcess(chosen['threshold'], chosen['min_component_mm3'])
            if chosen else True)
    return evaluate_lib.evaluate_run(run.workdir, config, split='test', checkpoint='best',
                                     write_predictions=config.write_predictions, post=post)


@contextlib.contextmanager
def _sigterm_stops(phase: str):
  """SIGTERM during a phase after training raises Preempted (exit 75 from main): nothing of the
  phase is left half-written, and the next start trains no step and redoes only this phase.
  Under jax.distributed SIGTERM stays JAX's preemption notifier."""
  if jax.distributed.is_initialized() or threading.current_thread() is not threading.main_thread():
    yield
    return

  def stop(signum, frame):
    del signum, frame
    raise Preempted(f'SIGTERM during {phase}: run the same command again to redo it')

  previous = signal.signal(signal.SIGTERM, stop)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)
