"""A trained run (or an ensemble of runs) ready to predict: networks built from config and
recipe, checkpoints restored, batched over all devices."""

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import jax.numpy as jnp
import ml_collections

from agmr_jax import checkpointing
from agmr_jax import data
from agmr_jax import runs
from agmr_jax import sharding as sharding_lib
from agmr_jax.inference import predictor as predictor_lib
from agmr_jax.models import MODELS
from input_pipeline import recipes


def network(name: str, kwargs: dict, recipe: recipes.Recipe, dtype):
  """MODELS[name](**kwargs, dtype=dtype); a model with modality groups gets the recipe's."""
  kwargs = dict(kwargs)
  if recipe.groups and 'groups' in MODELS[name].__dataclass_fields__:
    kwargs.setdefault('groups', tuple(recipe.groups))
  return MODELS[name](**kwargs, dtype=dtype)


def build_model(config: ml_collections.ConfigDict, recipe: recipes.Recipe):
  """The run's network."""
  return network(config.model, config.model_kwargs.to_dict(), recipe,
                 jnp.dtype(config.compute_dtype))


def _batch_size(config, batch_size: int | None, mesh) -> int:
  if batch_size is not None and batch_size <= 0:
    raise ValueError(f'--batch_size must be a positive number of slices, got {batch_size}')
  batch_size = batch_size or config.eval_batch_size
  if batch_size <= 0:
    raise ValueError(f'config.eval_batch_size must be positive, got {batch_size}')
  return -(-batch_size // mesh.size) * mesh.size  # round up to a multiple of the devices


def load_predictor(workdir, config, recipe: recipes.Recipe, *, checkpoint='best',
                   tta=False, batch_size: int | None = None):
  """(Predictor, variables, step) for a run: its model, restored, batched over all devices."""
  mesh = sharding_lib.make_mesh()
  model = build_model(config, recipe)
  step, variables = checkpointing.restore_variables(
      workdir, config, model, mesh, (1, *recipe.slice_shape), checkpoint)
  predictor = predictor_lib.Predictor(model, mesh, _batch_size(config, batch_size, mesh), tta=tta)
  return predictor, variables, step


def expand_members(workdirs: Sequence) -> list[pathlib.Path]:
  """Run folders of an ensemble: each workdir, or every fold of a cross-validation root."""
  members = []
  for workdir in map(pathlib.Path, workdirs):
    folds = sorted(p.parent for p in workdir.glob(f'fold*/{runs.CONFIG}'))
    members += [workdir] if (workdir / runs.CONFIG).exists() or not folds else folds
  if len(set(members)) != len(members):
    raise ValueError(f'a run is given twice: {[str(m) for m in members]}')
  return members


def check_same_recipe(members: Sequence[pathlib.Path], recipes_: Sequence[recipes.Recipe]) -> None:
  """Ensemble members must preprocess alike; ValueError naming the first differing field."""
  first = dataclasses.asdict(recipes_[0])
  for member, recipe in zip(members[1:], recipes_[1:]):
    for field, value in dataclasses.asdict(recipe).items():
      if value != first[field]:
        raise ValueError(f'{member / runs.RECIPE}: recipe field {field!r} is {value!r}, but '
                         f'{members[0]} has {first[field]!r}; an ensemble needs one preprocessing')


def resolve_members(workdirs: Sequence):
  """(members, configs, recipe) of one run or an ensemble, without loading any network."""
  members = expand_members(workdirs)
  configs = [runs.load_config(m) for m in members]
  recipes_ = [data.run_recipe(c, m) for c, m in zip(configs, members)]
  check_same_recipe(members, recipes_)
  return members, configs, recipes_[0]


def load_ensemble(members: Sequence[pathlib.Path], configs, recipe: recipes.Recipe, *,
                  checkpoint='best', tta=False, batch_size: int | None = None):
  """(predictor, variables, steps) of one run or the ensemble of several (`resolve_members`).

  One run gives its Predictor and variables; several an Ensemble averaging their probabilities
  (members with the same network share a compiled Predictor) and the list of their variables.
  """
  if len(members) == 1:
    predictor, variables, step = load_predictor(members[0], configs[0], recipe,
                                                checkpoint=checkpoint, tta=tta,
                                                batch_size=batch_size)
    return predictor, variables, [step]
  mesh = sharding_lib.make_mesh()
  predictors, keys, member_predictor, variables, steps = [], [], [], [], []
  for member, config in zip(members, configs):
    key = (config.model, json.dumps(config.model_kwargs.to_dict(), sort_keys=True, default=str),
           config.compute_dtype)
    model = build_model(config, recipe)
    if key not in keys:
      keys.append(key)
      predictors.append(predictor_lib.Predictor(
          model, mesh, _batch_size(config, batch_size, mesh), tta=tta))
    member_predictor.append(keys.index(key))
    step, member_variables = checkpointing.restore_variables(
        member, config, model, mesh, (1, *recipe.slice_shape), checkpoint)
    variables.append(member_variables)
    steps.append(step)
  return predictor_lib.Ensemble(predictors, member_predictor), variables, steps
