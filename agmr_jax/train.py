"""train_and_evaluate(config, workdir): the training loop around the pure train step.

Data come from built slice records (input_pipeline), one shard per process, assembled into global
batches sharded over the mesh's 'data' axis. The state is built sharded (eval_shape -> shardings
-> jit(init)), the step is jitted once with a donated state, and a run started on a workdir that
holds a checkpoint resumes from it -- the data iterator included -- and reaches the same
parameters an uninterrupted run would. SIGTERM (under jax.distributed: a preemption notice to any
process, synchronised by Orbax/JAX) saves a checkpoint at the current step and raises Preempted.
"""

import dataclasses
import json
from absl import logging
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from agmr_jax import checkpointing
from agmr_jax import evaluate as evaluate_lib
from agmr_jax import inference
from agmr_jax import objectives
from agmr_jax import optim
from agmr_jax import postprocess
from agmr_jax import reporting
from agmr_jax import runtime
from agmr_jax import sharding as sharding_lib
from agmr_jax import train_step as train_step_lib
from agmr_jax.models import MODELS
from agmr_jax.models import layers as models_layers
from input_pipeline import augment as augment_lib
from input_pipeline import datasets
from input_pipeline import pipeline
from input_pipeline import recipes


class NonFiniteLossError(FloatingPointError):
  """The loss or a gradient became NaN/Inf; the message names the step."""


class Preempted(Exception):
  """SIGTERM or a preemption notice stopped training; a checkpoint at the step reached is saved."""


def recipe_from_config(config: ml_collections.ConfigDict) -> recipes.Recipe:
  recipe = recipes.RECIPES[config.data.recipe]
  size = tuple(int(s) for s in config.data.image_size)
  if any(size):
    recipe = dataclasses.replace(recipe, size=size)
  return recipe


def prepare_data(config: ml_collections.ConfigDict) -> pipeline.SliceDataset:
  """Builds the records if missing (process 0 first, the others wait) and opens them."""
  def build():
    return datasets.prepare(
        config.data.dataset, recipe_from_config(config), data_dir=config.data.data_dir,
        manual_dir=config.data.manual_dir or None, num_subjects=config.data.num_subjects,
        seed=config.data.synthetic_seed, num_folds=config.data.num_folds,
        split_seed=config.data.split_seed)
  if jax.process_index() == 0:
    path = build()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('slice records built')
  if jax.process_index() != 0:
    path = build()  # Everything exists now: this only resolves the path.
  return pipeline.SliceDataset(path)


def bn_momentum(config: ml_collections.ConfigDict) -> float | None:
  """config.bn_momentum, None when it keeps the networks' own (-1, or absent in old configs)."""
  value = config.get('bn_momentum', -1.0)
  if value < 0:
    return None
  if value >= 1:
    raise ValueError(f'bn_momentum must be in [0, 1) (or -1 for the default), got {value}')
  return float(value)


def build_model(config: ml_collections.ConfigDict, dataset: pipeline.SliceDataset):
  kwargs = dict(config.model_kwargs.to_dict())
  groups = dataset.meta['recipe'].get('groups')
  if groups and 'groups' in MODELS[config.model].__dataclass_fields__:
    kwargs.setdefault('groups', tuple(groups))
  return MODELS[config.model](**kwargs, dtype=jnp.dtype(config.compute_dtype))


@dataclasses.dataclass
class Run:
  """Everything the loop needs, built once."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  dataset: pipeline.SliceDataset
  folds: dict
  mesh: jax.sharding.Mesh
  model: object
  state: train_step_lib.TrainState
  abstract_state: train_step_lib.TrainState
  step_fn: object
  data_iter: object
  rng: jax.Array
  steps_per_epoch: int
  total_steps: int
  preempted: bool = False


def setup(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Run:
  """Data, model, sharded state and jitted step; restores the latest checkpoint if any."""
  workdir = pathlib.Path(workdir)
  dataset = prepare_data(config)
  val_fold = config.data.val_fold if config.data.val_fold >= 0 else None
  folds = dataset.split_folds(config.data.test_fold, val_fold)
  mesh = sharding_lib.make_mesh()
  local_bs = sharding_lib.local_batch_size(config.batch_size, mesh)
  balance = config.data.get('lesion_balance', 'slice')
  if balance not in ('slice', 'case'):
    raise ValueError(f"data.lesion_balance must be 'slice' or 'case', not {balance!r}")
  case_ids = [c for c, _ in dataset.records(folds['train'])] if balance == 'case' else None
  source = pipeline.oversample_lesions(dataset.source(folds['train']),
                                      dataset.lesion_pixels(folds['train']),
                                      config.data.lesion_oversample, case_ids)
  steps_per_epoch = max(len(source) // config.batch_size, 1)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(config.num_epochs * steps_per_epoch))

  root = jax.random.key(config.seed)
  init_rng, dropout_rng = jax.random.split(root)
  data_seed = int(jax.random.randint(jax.random.fold_in(root, 1), (), 0, 2**31 - 1))
  augment = augment_lib.Augment.from_config(augment_lib.AUGMENT_PRESETS[config.data.augment])
  ds = pipeline.train_dataset(source, batch_size=local_bs, seed=data_seed,
                              augment=augment if augment.ops else None,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
  data_iter = pipeline.make_iterator(ds, worker_count=config.data.worker_count)

  model = build_model(config, dataset)
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch, total_steps)
  input_shape = (1, *dataset.fold_source(folds['train'][0])[0]['image'].shape)
  init_fn = train_step_lib.make_init(model, input_shape, tx)
  state_sharding = jax.tree.map(lambda _: sharding_lib.replicated(mesh), jax.eval_shape(init_fn, init_rng))
  abstract = checkpointing.abstract_state(init_fn, init_rng, state_sharding)
  state = train_step_lib.init_state(init_fn, init_rng, state_sharding)
  objective = objectives.make_objective(config.loss.name, **config.loss.kwargs.to_dict())
  step_fn = jax.jit(
      train_step_lib.make_train_step(
          model, objective, bn_momentum=bn_momentum(config),
          model_bn_momentum=models_layers.BN_MOMENTUM),
      in_shardings=(state_sharding, sharding_lib.data_sharded(mesh), sharding_lib.replicated(mesh)),
      out_shardings=(state_sharding, sharding_lib.replicated(mesh)), donate_argnums=(0,))
  return Run(config, workdir, dataset, folds, mesh, model, state, abstract, step_fn, data_iter,
             dropout_rng, steps_per_epoch, total_steps)


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


def _validate(run: Run, writer: reporting.MetricWriter, predictor, step: int) -> float | None:
  if 'validation' not in run.folds:
    return None
  cases = pipeline.iter_cases(run.dataset, run.folds['validation'])
  rows, sample = inference.validate(predictor, run.state.variables, cases)
  score = float(np.mean([r['dice'] for r in rows]))
  writer.scalars(step, {'val/dice': score})
  if sample is not None:
    writer.images(step, {'val/overlay': reporting.overlay(*sample)})
  logging.info('step %d: validation per-case Dice %.4f over %d cases', step, score, len(rows))
  return score


def train_loop(run: Run) -> int:
  """Trains to total_steps (or SIGTERM); returns the step reached."""
  config = run.config
  ckpt = checkpointing.Checkpointer(run.workdir, max_to_keep=config.max_checkpoints,
                                    async_save=config.async_checkpoints)
  start = 0
  if ckpt.latest_step() is not None:
    run.state = ckpt.restore(run.abstract_state, run.data_iter)
    start = int(jax.device_get(run.state.step))
    logging.info('Resumed from step %d of %s', start, run.workdir)
  writer = reporting.MetricWriter(run.workdir)
  predictor = inference.Predictor(run.model, run.mesh, config.eval_batch_size)
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else run.steps_per_epoch
  progress = reporting.Progress(run.total_steps, start)
  best = _best_score(run.workdir)
  history, step = [], start
  with _StopFlag(ckpt) as stop:
    while step < run.total_steps and not stop.set:
      batch = sharding_lib.global_batch(next(run.data_iter), run.mesh)
      run.state, metrics = run.step_fn(run.state, batch, run.rng)
      step += 1
      stop.poll(step)
      history.append((step, metrics))
      if step % config.log_every_steps == 0 or step == run.total_steps:
        history = jax.device_get(history)
        _check_finite(history)
        means = {f'train/{k}': np.mean([m[k] for _, m in history]) for k in history[0][1]
                 if k != 'finite'}
        rate, eta = progress.rate(step)
        means['train/steps_per_s'] = rate
        writer.scalars(step, means)
        logging.info('step %d/%d: loss %.4f, %.2f steps/s, ETA %s', step, run.total_steps,
                     means['train/loss'], rate, reporting.format_eta(eta))
        history = []
      if step % eval_every == 0 or step == run.total_steps:
        score = _validate(run, writer, predictor, step)
        if score is not None and (best is None or score > best):
          best = score
          ckpt.save_best(step, run.state, score)
          _write_best(run.workdir, step, score)
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


def _best_score(workdir: pathlib.Path) -> float | None:
  path = workdir / 'best.json'
  return json.loads(path.read_text())['score'] if path.exists() else None


def _write_best(workdir: pathlib.Path, step: int, score: float) -> None:
  if jax.process_index() == 0:
    (workdir / 'best.json').write_text(json.dumps({'step': step, 'score': score}))


# Fields a resumed run may change: they decide what is logged, saved or evaluated and where data
# are read, not the parameters reached. The training length may grow too (a warning says that a
# schedule tied to it then differs from an uninterrupted run's).
RESUME_MAY_CHANGE = frozenset({
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'max_checkpoints',
    'stop_after_steps', 'async_checkpoints', 'final_eval', 'tune_postprocess',
    'write_predictions', 'eval_batch_size', 'data.data_dir', 'data.manual_dir',
    'data.worker_count'})
_LENGTH = frozenset({'num_train_steps', 'num_epochs'})


def check_resumable(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a run under a config that would train it differently.

  A workdir with a checkpoint resumes; its config.json says how the run was started. A change to
  anything outside RESUME_MAY_CHANGE (model, data, loss, optimiser, seed, batch size, ...) would
  silently mix two experiments in one run, so it raises, naming the fields.
  """
  if not any((workdir / 'checkpoints').glob('[0-9]*')):
    return
  changed = [c for c in evaluate_lib.config_changes(workdir, config)
             if c[0] not in RESUME_MAY_CHANGE]
  if all(name in _LENGTH for name, _, _ in changed):
    for name, old, new in changed:
      logging.warning('%s: resuming with %s %s (was %s); a schedule tied to the training length '
                      'now differs from an uninterrupted run', workdir, name, new, old)
    return
  details = ', '.join(f'{name}: {old!r} -> {new!r}' for name, old, new in changed)
  raise ValueError(f'{workdir / "config.json"}: {workdir} holds a run started with another config '
                   f'({details}); resume it with its own config, or train in a new --workdir')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains (resuming if possible), then evaluates the test split; returns its summary."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  runtime.set_xla_flags(config.get('deterministic', False))  # Raises if JAX started without them.
  check_resumable(workdir, config)
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  reporting.log_topology()
  run = setup(config, workdir)
  logging.info('%s: %d train slices/epoch, %d steps/epoch, %d steps', config.model,
               run.steps_per_epoch * config.batch_size, run.steps_per_epoch, run.total_steps)
  t0 = time.perf_counter()
  step = train_loop(run)
  run.data_iter.close() if hasattr(run.data_iter, 'close') else None
  logging.info('Training stopped at step %d after %.0f s', step, time.perf_counter() - t0)
  if run.preempted:
    raise Preempted(f'preempted at step {step}: checkpoint saved in {run.workdir}; run the same '
                    'command again to resume')
  if step < run.total_steps or not config.final_eval:
    return None
  chosen = evaluate_lib.tune_postprocess(run.workdir, config) if config.tune_postprocess else None
  post = (postprocess.PostProcess(chosen['threshold'], chosen['min_component_mm3'])
          if chosen else True)
  return evaluate_lib.evaluate_run(run.workdir, config, split='test', checkpoint='best',
                                   write_predictions=config.write_predictions, post=post)
