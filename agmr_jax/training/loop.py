"""The training loop: steps, logging, validation, best and periodic checkpoints, SIGTERM.

Every `log_every_steps` the metrics are fetched, with the share of wall time the loop waited for
the loader (DataWait: near 1 the accelerator starves), and a non-finite loss stops the run naming
the step; every `eval_every_steps` the validation cases are predicted whole and their per-case 3D
Dice decides the best checkpoint.
"""

import signal
import threading
import time

import jax
import numpy as np
from absl import logging

from agmr_jax import checkpointing
from agmr_jax import progress
from agmr_jax import runs
from agmr_jax import sharding as sharding_lib
from agmr_jax.evaluation import metrics as metrics_lib
from agmr_jax.inference.predictor import Predictor
from agmr_jax.training import writer as writer_lib
from agmr_jax.training.setup import Run
from input_pipeline import pipeline


class NonFiniteLossError(FloatingPointError):
  """The loss or a gradient became NaN/Inf; the message names the step."""


class _StopFlag:
  """Set by SIGTERM or a preemption sync point: the loop saves at the current step and returns.

  Under jax.distributed SIGTERM belongs to JAX's preemption notifier (installed by
  jax.distributed.initialize): a notice to any process makes every process reach the same sync
  step, so all of them join the collective save. A Python handler would replace that notifier,
  and a process stopping alone would leave the others waiting in the next collective.
  """

  def __init__(self, ckpt: checkpointing.Checkpointer):
    self.set = False
    self.preempted = False
    self._ckpt = ckpt
    self._synced = jax.distributed.is_initialized()
    self._previous = None

  def __enter__(self):
    if not self._synced and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint and stopping')
    self.set = self.preempted = True

  def poll(self, step: int) -> None:
    """Every process calls this at every step (the sync protocol needs it)."""
    if self._synced and self._ckpt.reached_preemption(step):
      logging.warning('Preemption sync point at step %d: saving a checkpoint and stopping', step)
      self.set = self.preempted = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(history: list[tuple[int, dict]]) -> None:
  for step, metrics in history:
    if not bool(metrics['finite']):
      raise NonFiniteLossError(
          f'non-finite loss or gradient at step {step} (loss={float(metrics["loss"])}); the '
          'update was skipped and the last checkpoint is intact')


def _validate(run: Run, writer: writer_lib.MetricWriter, predictor, step: int) -> float | None:
  if 'validation' not in run.folds:
    return None
  cases = pipeline.iter_cases(run.dataset, run.folds['validation'])
  rows, sample = validate(predictor, run.state.variables, cases)
  score = float(np.mean([r['dice'] for r in rows]))
  writer.scalars(step, {'val/dice': score})
  if sample is not None:
    writer.images(step, {'val/overlay': writer_lib.overlay(*sample)})
  logging.info('step %d: validation per-case Dice %.4f over %d cases', step, score, len(rows))
  return score


class DataWait:
  """Times the loop's waits for the loader: `with wait:` around fetching a batch.

  `interval()` returns (seconds waited, share of the wall time) since the previous call: near 1
  the accelerator starves for data; near 0 the loader keeps up (jitted steps run asynchronously,
  so the time a step computes is spent in the next wait for its results, not here).
  """

  def __init__(self):
    self._since = time.perf_counter()
    self._waited = 0.0
    self._start = 0.0

  def __enter__(self):
    self._start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self._waited += time.perf_counter() - self._start

  def interval(self) -> tuple[float, float]:
    now = time.perf_counter()
    waited, wall = self._waited, max(now - self._since, 1e-9)
    self._since, self._waited = now, 0.0
    return waited, min(waited / wall, 1.0)


def _log_interval(run: Run, writer: writer_lib.MetricWriter, step: int, history: list,
                  rate_eta: tuple[float, float | None], wait: DataWait) -> None:
  """Means of the interval's metrics, its speed and data wait, to the log and the writer."""
  _check_finite(history)
  means = {f'train/{k}': np.mean([m[k] for _, m in history]) for k in history[0][1]
           if k != 'finite'}
  rate, eta = rate_eta
  waited, share = wait.interval()
  means['train/steps_per_s'] = rate
  means['train/data_wait_share'], means['train/data_wait_s'] = share, waited
  writer.scalars(step, means)
  logging.info('step %d/%d: loss %.4f, %.2f steps/s, data wait %.0f%% (%.2f s), ETA %s', step,
               run.total_steps, means['train/loss'], rate, 100 * share, waited,
               progress.format_eta(eta))


def train_loop(run: Run) -> int:
  """Trains to total_steps (or SIGTERM); returns the step reached."""
  config = run.config
  ckpt = checkpointing.Checkpointer(run.workdir, max_to_keep=config.max_checkpoints,
                                    async_save=config.async_checkpoints)
  start = 0
  if jax.process_index() == 0:
    checkpointing.remove_partial_saves(run.workdir)
  if ckpt.latest_step() is not None:
    run.state = ckpt.restore(run.abstract_state, run.data_iter)
    start = int(jax.device_get(run.state.step))
    logging.info('Resumed from step %d of %s', start, run.workdir)
  writer = writer_lib.MetricWriter(run.workdir)
  predictor = Predictor(run.model, run.mesh, config.eval_batch_size)
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else run.steps_per_epoch
  rate_meter = progress.StepRate(run.total_steps, start)
  best = runs.best_score(run.workdir)
  history, step, wait = [], start, DataWait()
  with _StopFlag(ckpt) as stop:
    while step < run.total_steps and not stop.set:
      with wait:
        batch = sharding_lib.global_batch(next(run.data_iter), run.mesh)
      run.state, metrics = run.step_fn(run.state, batch, run.rng)
      step += 1
      stop.poll(step)
      history.append((step, metrics))
      if step % config.log_every_steps == 0 or step == run.total_steps:
        _log_interval(run, writer, step, jax.device_get(history), rate_meter.rate(step), wait)
        history = []
      if step % eval_every == 0 or step == run.total_steps:
        score = _validate(run, writer, predictor, step)
        if score is not None and (best is None or score > best):
          best = score
          ckpt.save_best(step, run.state, score)
          if jax.process_index() == 0:
            runs.write_best_score(run.workdir, step, score)
      if 0 < config.stop_after_steps <= step - start:
        stop.set = True  # A time-boxed job: checkpoint now, the next job resumes.
      if stop.set or step % config.checkpoint_every_steps == 0 or step == run.total_steps:
        ckpt.save(step, run.state, run.data_iter, force=True)
  _check_finite(jax.device_get(history))
  ckpt.wait()
  ckpt.close()
  run.preempted = stop.preempted
  writer.close()
  return step


def validate(predictor: Predictor, variables, cases, *, threshold: float = 0.5):
  """Per-case 3D Dice on the record grid; returns (rows, overlay sample).

  The sample is the slice with the largest true lesion of the first case that has one, as
  (image channel, truth, prediction) for TensorBoard.
  """
  rows, sample = [], None
  for case in cases:
    probs = predictor(variables, case.images)
    pred = probs >= threshold
    truth = case.masks > 0
    rows.append({'case_id': case.case_id, 'dice': metrics_lib.dsc(pred, truth),
                 'lesion_voxels': int(truth.sum()), 'predicted_voxels': int(pred.sum())})
    if sample is None and truth.any():
      z = int(np.argmax(truth.sum(axis=(1, 2))))
      centre = case.images.shape[-1] // 2
      sample = (case.images[z, :, :, centre], truth[z], pred[z])
  return rows, sample
