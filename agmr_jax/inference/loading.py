"""A trained run ready to predict: its network built from config and recipe, its checkpoint
restored, batched over all devices."""

import jax.numpy as jnp
import ml_collections

from agmr_jax import checkpointing
from agmr_jax import sharding as sharding_lib
from agmr_jax.inference import predictor as predictor_lib
from agmr_jax.models import MODELS
from input_pipeline import recipes


def build_model(config: ml_collections.ConfigDict, recipe: recipes.Recipe):
  """The run's network; a model with modality groups gets the recipe's."""
  kwargs = dict(config.model_kwargs.to_dict())
  if recipe.groups and 'groups' in MODELS[config.model].__dataclass_fields__:
    kwargs.setdefault('groups', tuple(recipe.groups))
  return MODELS[config.model](**kwargs, dtype=jnp.dtype(config.compute_dtype))


def load_predictor(workdir, config, recipe: recipes.Recipe, *, checkpoint='best',
                   tta: bool = False, batch_size: int | None = None):
  """(Predictor, variables, step) for a run: its model, restored, batched over all devices."""
  mesh = sharding_lib.make_mesh()
  model = build_model(config, recipe)
  step, variables = checkpointing.restore_variables(workdir, config, model, mesh, (1, *recipe.slice_shape),
                                      checkpoint)
  batch_size = batch_size or config.eval_batch_size
  batch_size = -(-batch_size // mesh.size) * mesh.size  # round up to a multiple of the devices
  return predictor_lib.Predictor(model, mesh, batch_size, flip_tta=tta), variables, step
