"""Shared fixtures: 8 virtual CPU devices, one tiny built dataset per session."""

import os

# Before jax initialises: the sharding tests compare 1 and 8 devices in one process.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '8')

import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent compilation cache per session: a network compiles once, not once a run."""
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> pathlib.Path:
  """One data_dir for the session: each tiny dataset is written and built once."""
  return tmp_path_factory.mktemp('data')


@pytest.fixture(scope='session')
def tiny_recipe():
  from input_pipeline import recipes  # pylint: disable=g-import-not-at-top
  return recipes.RECIPES['tiny_2p5d']


@pytest.fixture(scope='session')
def tiny_built(data_dir, tiny_recipe) -> pathlib.Path:
  """synthetic_tiny (10 cases of 40x36x12 voxels) built with tiny_2p5d: 5 folds of 2 cases."""
  from input_pipeline import datasets  # pylint: disable=g-import-not-at-top
  return datasets.prepare('synthetic_tiny', tiny_recipe, data_dir=data_dir, num_subjects=10)


@pytest.fixture(scope='session')
def tiny_raw(tiny_built, data_dir) -> pathlib.Path:
  """The NIfTI tree behind tiny_built."""
  return data_dir / 'raw' / 'synthetic_tiny-n10-seed0'


def tiny_config(module, data_dir, variant: str = 'tiny', **overrides):
  """`module.get_config(variant)` pointed at the session's data_dir, with dotted overrides."""
  c = module.get_config(variant)
  c.data.data_dir = str(data_dir)
  for key, value in overrides.items():
    node = c
    *path, last = key.split('.')
    for part in path:
      node = node[part]
    node[last] = value
  return c
