"""Everything a training run needs, built once: data, mesh, model, sharded state, jitted step.

The state is built sharded (eval_shape -> shardings -> jit(init)); the step is jitted once with
the state donated. Data come from the built slice records, one shard per process, through Grain.
"""

import dataclasses
import pathlib

from absl import logging
import jax
import ml_collections

from agmr_jax import data
from agmr_jax import optim
from agmr_jax import sharding as sharding_lib
from agmr_jax import state as state_lib
from agmr_jax.inference import loading
from agmr_jax.models import layers as models_layers
from agmr_jax.objectives import make_objective
from agmr_jax.training import train_step as train_step_lib
from input_pipeline import augment as augment_lib
from input_pipeline.augment.device import DeviceAugment
from input_pipeline import builder as builder_lib
from input_pipeline import pipeline


def bn_momentum(config: ml_collections.ConfigDict) -> float | None:
  """config.bn_momentum, None when it keeps the networks' own (-1, or absent in old configs)."""
  value = config.get('bn_momentum', -1.0)
  if value < 0:
    return None
  if value >= 1:
    raise ValueError(f'bn_momentum must be in [0, 1) (or -1 for the default), got {value}')
  return float(value)


@dataclasses.dataclass
class Run:
  """Everything the loop needs, built once."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  dataset: pipeline.SliceDataset
  folds: dict
  mesh: jax.sharding.Mesh
  model: object
  state: state_lib.TrainState
  abstract_state: state_lib.TrainState
  step_fn: object
  data_iter: object
  rng: jax.Array
  steps_per_epoch: int
  total_steps: int
  preempted: bool = False


def check_config(config: ml_collections.ConfigDict) -> None:
  """Sizes and periods that must be positive, refused before anything is written."""
  for name in ('batch_size', 'eval_batch_size', 'log_every_steps', 'checkpoint_every_steps'):
    if config[name] <= 0:
      raise ValueError(f'config.{name} must be positive, got {config[name]}')
  augment_where(config)


def augment_where(config: ml_collections.ConfigDict) -> str:
  """config.data.augment_on, checked ('host' for configs saved before the field existed)."""
  where = config.data.get('augment_on', 'host')
  if where not in augment_lib.AUGMENT_ON:
    raise ValueError(f'config.data.augment_on must be one of {augment_lib.AUGMENT_ON}, '
                     f'got {where!r}')
  if config.data.augment not in augment_lib.AUGMENT_PRESETS:
    raise ValueError(f'config.data.augment must be one of {sorted(augment_lib.AUGMENT_PRESETS)}, '
                     f'got {config.data.augment!r}')
  return where


def device_augment(preset: str, augment_on: str, seed: int) -> DeviceAugment | None:
  """The preset as a function of (global batch, step) for the train step, or None."""
  if augment_on != 'device' or not augment_lib.AUGMENT_PRESETS[preset]:
    return None
  return DeviceAugment.from_config(augment_lib.AUGMENT_PRESETS[preset], seed)


def setup(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Run:
  """Data, model, sharded state and jitted step; restores the latest checkpoint if any."""
  workdir = pathlib.Path(workdir)
  check_config(config)
  dataset = data.prepare_data(config)
  if builder_lib.codec_of(dataset.path) == 'zstd':
    logging.info('The records in %s are zstd-compressed: reading them costs about 1.3x the host '
                 'CPU of uncompressed ones; remove the folder to rebuild them uncompressed',
                 dataset.path)
  val_fold = config.data.val_fold if config.data.val_fold >= 0 else None
  folds = dataset.split_folds(config.data.test_fold, val_fold)
  mesh = sharding_lib.make_mesh()
  local_bs = sharding_lib.local_batch_size(config.batch_size, mesh)
  balance = config.data.get('lesion_balance', 'slice')
  if balance not in ('slice', 'case'):
    raise ValueError(f"data.lesion_balance must be 'slice' or 'case', not {balance!r}")
  case_ids = [c for c, _ in dataset.records(folds['train'])] if balance == 'case' else None
  source = pipeline.oversample_lesions(dataset.train_records(folds['train']),
                                      dataset.lesion_pixels(folds['train']),
                                      config.data.lesion_oversample, case_ids)
  steps_per_epoch = max(len(source) // config.batch_size, 1)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else int(config.num_epochs * steps_per_epoch))

  root = jax.random.key(config.seed)
  init_rng, dropout_rng = jax.random.split(root)
  data_seed = int(jax.random.randint(jax.random.fold_in(root, 1), (), 0, 2**31 - 1))
  augment_on = augment_where(config)
  ds = pipeline.train_dataset(source, batch_size=local_bs, seed=data_seed,
                              augment=augment_lib.host_augment(config.data.augment, augment_on),
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
  data_iter = pipeline.make_iterator(ds, worker_count=config.data.worker_count,
                                     read_threads=config.data.get('read_threads', 2))

  model = loading.build_model(config, data.recipe_of(dataset))
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch, total_steps)
  input_shape = (1, *dataset.fold_source(folds['train'][0])[0]['image'].shape)
  init_fn = state_lib.make_init(model, input_shape, tx)
  state_sharding = jax.tree.map(lambda _: sharding_lib.replicated(mesh),
                                jax.eval_shape(init_fn, init_rng))
  abstract = state_lib.abstract_state(init_fn, init_rng, state_sharding)
  state = state_lib.init_state(init_fn, init_rng, state_sharding)
  objective = make_objective(config.loss.name, **config.loss.kwargs.to_dict())
  step_fn = jax.jit(
      train_step_lib.make_train_step(
          model, objective, bn_momentum=bn_momentum(config),
          model_bn_momentum=models_layers.BN_MOMENTUM,
          augment=device_augment(config.data.augment, augment_on, config.seed)),
      in_shardings=(state_sharding, sharding_lib.data_sharded(mesh), sharding_lib.replicated(mesh)),
      out_shardings=(state_sharding, sharding_lib.replicated(mesh)), donate_argnums=(0,))
  return Run(config, workdir, dataset, folds, mesh, model, state, abstract, step_fn, data_iter,
             dropout_rng, steps_per_epoch, total_steps)
