r"""Builds slice records for any dataset and recipe.

  agmr-build --dataset atlas_r12 --recipe agmr_2p5d \
      --manual_dir /data/ATLAS_R1.2 --data_dir data
  agmr-build --dataset synthetic_atlas --recipe agmr_2p5d --data_dir data

Work already done (synthetic NIfTI files, built records) is skipped. A bad input file stops the
build with one message naming the file and the problem, exit status 1, and nothing half-built.
"""

import dataclasses

from absl import flags

from agmr_jax import cli
from input_pipeline import builder
from input_pipeline import datasets
from input_pipeline import recipes

FLAGS = cli.new_flags()
flags.DEFINE_string('dataset', None, 'A layout name or a synthetic dataset name.',
                    flag_values=FLAGS)
flags.DEFINE_enum('recipe', None, sorted(recipes.RECIPES), 'Preprocessing recipe.',
                  flag_values=FLAGS)
flags.DEFINE_list('size', None, 'Override the recipe output size: H,W.', flag_values=FLAGS)
flags.DEFINE_string('manual_dir', None, 'Folder holding the raw dataset.', flag_values=FLAGS)
flags.DEFINE_string('data_dir', 'data', 'Where records (and synthetic data) go.',
                    flag_values=FLAGS)
flags.register_validator(
    'size', lambda v: v is None or (len(v) == 2 and all(s.isdigit() and int(s) > 0 for s in v)),
    message='--size takes two positive integers H,W, e.g. 192,192', flag_values=FLAGS)
flags.DEFINE_integer('num_subjects', 20, 'Synthetic datasets: subjects.', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Synthetic datasets: seed.', flag_values=FLAGS)
flags.DEFINE_integer('num_folds', 5, 'Patient-level folds (a test fold and at least one to '
                     'train on).', lower_bound=2, flag_values=FLAGS)
flags.DEFINE_integer('split_seed', 0, 'Seed of the fold assignment.', flag_values=FLAGS)
flags.DEFINE_enum('codec', builder.DEFAULT_CODEC, sorted(builder.CODECS),
                  "Record compression of a new build: 'none' reads fastest (training's host "
                  "supply), 'zstd' takes less disk. Existing records are reused either way.",
                  flag_values=FLAGS)
cli.deprecated_alias(FLAGS, 'layout', 'dataset')
cli.require(FLAGS, 'dataset', 'recipe')


def _build(f) -> None:
  recipe = recipes.RECIPES[f.recipe]
  if f.size:
    recipe = dataclasses.replace(recipe, size=tuple(int(s) for s in f.size))
  path = datasets.prepare(f.dataset, recipe, data_dir=f.data_dir, manual_dir=f.manual_dir,
                          num_subjects=f.num_subjects, seed=f.seed, num_folds=f.num_folds,
                          split_seed=f.split_seed, codec=f.codec)
  print(path)


def main(argv=None) -> int:
  return cli.run(FLAGS, argv, _build)


if __name__ == '__main__':
  cli.entry(main)
