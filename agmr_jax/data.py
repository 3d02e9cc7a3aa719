"""A run's data: its slice records (built when missing) and the recipe they were made with."""

import pathlib

import jax
import ml_collections
from absl import logging

from agmr_jax import runs
from input_pipeline import datasets
from input_pipeline import pipeline
from input_pipeline import recipes


def recipe_of(dataset: pipeline.SliceDataset) -> recipes.Recipe:
  """The recipe the records were built with (as stored in their metadata)."""
  return recipes.Recipe(**runs.tuples(dataset.meta['recipe']))


def records_identity(dataset: pipeline.SliceDataset) -> dict:
  """What names a run's data: the records' name (their source's fingerprint and the recipe's
  digest, input_pipeline.builder.config_name), the source and the folder the cases were read from."""
  return {'name': dataset.path.parent.name, 'source': dataset.meta['source'],
          'manual_dir': dataset.meta['manual_dir']}


def check_same_records(workdir, dataset: pipeline.SliceDataset) -> bool:
  """Warns (and returns False) when `dataset` is not the records the run in `workdir` was trained
  on: the source folder changed since (files added, edited or removed) or another was given."""
  trained = runs.read_records(workdir)
  now = records_identity(dataset)
  if trained is None or trained['name'] == now['name']:
    return True
  logging.warning(
      '%s: the run was trained on records %s (cases from %s) but the data read now are %s '
      '(cases from %s): the source folder changed since training or another one is given, so '
      'these results are not on the data the run was trained and validated on',
      pathlib.Path(workdir) / runs.RECIPE, trained['name'], trained['manual_dir'], now['name'],
      now['manual_dir'])
  return False


def prepare_data(config: ml_collections.ConfigDict) -> pipeline.SliceDataset:
  """Builds the records if missing (process 0 first, the others wait) and opens them."""
  def build():
    return datasets.prepare(
        config.data.dataset, runs.recipe_from_config(config), data_dir=config.data.data_dir,
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


def run_recipe(config: ml_collections.ConfigDict, workdir=None) -> recipes.Recipe:
  """The recipe a run was trained with: its recipe.json (immune to later edits of
  recipes.RECIPES); else the config's recipe when it names the modalities; else the records'."""
  stored = runs.read_recipe(workdir) if workdir else None
  if stored is not None:
    return stored
  recipe = runs.recipe_from_config(config)
  if recipe.modalities is None:  # taken from the dataset at build time: ask the built records
    recipe = recipe_of(prepare_data(config))
  return recipe
