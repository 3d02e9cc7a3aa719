r"""Builds slice records for any dataset and recipe.

  python -m input_pipeline.build --dataset atlas_r12 --recipe agmr_2p5d \
      --manual_dir /data/ATLAS_R1.2 --data_dir data
  python -m input_pipeline.build --dataset synthetic_atlas --recipe agmr_2p5d --data_dir data

Work already done (synthetic NIfTI files, built records) is skipped. A bad input file stops the
build with one message naming the file and the problem, exit status 1, and nothing half-built.
"""

import dataclasses
import sys

from absl import app
from absl import flags
from absl import logging

from input_pipeline import datasets
from input_pipeline import recipes
from input_pipeline.errors import DataError

_DATASET = flags.DEFINE_string('dataset', None, 'A layout name or a synthetic dataset name.')
_LAYOUT = flags.DEFINE_string('layout', None, 'Alias of --dataset for real layouts.')
_RECIPE = flags.DEFINE_enum('recipe', None, sorted(recipes.RECIPES), 'Preprocessing recipe.')
_SIZE = flags.DEFINE_list('size', None, 'Override the recipe output size: H,W.')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'Folder holding the raw dataset.')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data', 'Where records (and synthetic data) go.')
_NUM_SUBJECTS = flags.DEFINE_integer('num_subjects', 20, 'Synthetic datasets: subjects.')
_SEED = flags.DEFINE_integer('seed', 0, 'Synthetic datasets: seed.')
_NUM_FOLDS = flags.DEFINE_integer('num_folds', 5, 'Patient-level folds.')
_SPLIT_SEED = flags.DEFINE_integer('split_seed', 0, 'Seed of the fold assignment.')


def main(argv):
  del argv
  dataset = _DATASET.value or _LAYOUT.value
  if not dataset or not _RECIPE.value:
    raise app.UsageError('--dataset (or --layout) and --recipe are required')
  recipe = recipes.RECIPES[_RECIPE.value]
  if _SIZE.value:
    recipe = dataclasses.replace(recipe, size=tuple(int(s) for s in _SIZE.value))
  try:
    path = datasets.prepare(dataset, recipe, data_dir=_DATA_DIR.value,
                            manual_dir=_MANUAL_DIR.value, num_subjects=_NUM_SUBJECTS.value,
                            seed=_SEED.value, num_folds=_NUM_FOLDS.value,
                            split_seed=_SPLIT_SEED.value)
  except (DataError, ValueError, FileExistsError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(path)


if __name__ == '__main__':
  app.run(main)
