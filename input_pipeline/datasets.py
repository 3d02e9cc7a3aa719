"""Resolves a dataset name (a real layout or a synthetic dataset) into built slice records.

One function serves the build command, the train loop and the tests:

    path = prepare('synthetic_atlas', recipe, data_dir='data')               # writes, then builds
    path = prepare('atlas_r12', recipe, data_dir='data', manual_dir='ATLAS')  # builds from disk

Synthetic NIfTI trees go to `{data_dir}/raw/{synthetic.tag}` in their real layouts, so the
layout readers and the builder are exercised exactly as with real data. Every step is skipped
when its output exists already.
"""

import dataclasses
import hashlib
import os
import pathlib

from absl import logging

from input_pipeline import builder as builder_lib
from input_pipeline import layouts
from input_pipeline import recipes as recipes_lib
from input_pipeline import synthetic
from input_pipeline.errors import DataError


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a dataset's NIfTI files are and how they are laid out."""
  name: str  # tag used in the records' config name
  layout: str
  manual_dir: pathlib.Path


def fingerprint(root: pathlib.Path) -> str:
  """8 hex digits of a source folder: its resolved path and every file's relative name, size and
  modification time. Records built from another folder, or from changed files, get another name
  and never answer for these (the build cache is keyed by it)."""
  root = pathlib.Path(root).resolve()
  digest = hashlib.sha1(str(root).encode())
  for path in sorted(p for p in root.rglob('*') if p.is_file()):
    stat = path.stat()
    digest.update(f'\n{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}'.encode())
  return digest.hexdigest()[:8]


def resolve(dataset: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None,
            num_subjects: int = 20, seed: int = 0) -> Source:
  """Finds (and for synthetic datasets, writes if missing) the NIfTI tree of `dataset`."""
  if dataset in synthetic.SYNTHETIC:
    _, layout = synthetic.SYNTHETIC[dataset]
    tag = synthetic.tag(dataset, num_subjects, seed)
    root = pathlib.Path(manual_dir) if manual_dir else pathlib.Path(data_dir) / 'raw' / tag
    if not root.exists():
      logging.info('Writing synthetic dataset %s (%d subjects) to %s', dataset, num_subjects, root)
      synthetic.write_dataset(dataset, root, num_subjects, seed=seed)
    # The generated tree under data_dir is named by its generator version, size and seed; one a
    # user points at is fingerprinted like real data.
    name = f'{tag}-{fingerprint(root)}' if manual_dir else tag
    return Source(name=name, layout=layout, manual_dir=root)
  if dataset not in layouts.LAYOUTS:
    known = sorted(layouts.LAYOUTS) + sorted(synthetic.SYNTHETIC)
    raise ValueError(f'unknown dataset {dataset!r}; known: {", ".join(known)}')
  if not manual_dir:
    raise ValueError(f'dataset {dataset!r} is read from disk: pass its folder as manual_dir')
  root = pathlib.Path(manual_dir)
  if not root.is_dir():
    raise DataError(root, 'manual_dir does not exist or is not a folder')
  return Source(name=f'{dataset}-{fingerprint(root)}', layout=dataset, manual_dir=root)


def prepare(dataset: str, recipe: recipes_lib.Recipe, *, data_dir: str | os.PathLike,
            manual_dir: str | os.PathLike | None = None, num_subjects: int = 20,
            seed: int = 0, num_folds: int = 5, split_seed: int = 0,
            codec: str = builder_lib.DEFAULT_CODEC) -> pathlib.Path:
  """Writes/builds what is missing; returns the built records' folder (`codec`: a new build's
  record compression, builder.CODECS)."""
  source = resolve(dataset, data_dir, manual_dir, num_subjects, seed)
  if recipe.modalities is None:
    recipe = dataclasses.replace(
        recipe, modalities=tuple(layouts.modalities_of(source.layout, source.manual_dir)))
  return builder_lib.build(source=source.name, layout=source.layout, recipe=recipe,
                           data_dir=data_dir, manual_dir=source.manual_dir,
                           num_folds=num_folds, split_seed=split_seed, codec=codec)
