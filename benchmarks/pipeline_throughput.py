r"""Input pipeline throughput: augmented slices/s of the Grain loader and volumes/s of the builder.

  python -m benchmarks.pipeline_throughput [--data_dir /tmp/bench_data] [--batches 40]

Uses synthetic ATLAS-like subjects built with the AGMR 2.5D recipe (192x192x4 slices), writing them
first if needed. Loader rows: batches of 16 augmented slices through the full training chain
(record read, float16 -> float32, augmentation, batching) with 0, 1 and 2 worker processes;
warm-up batches excluded. 'per core' divides by the processes doing the work (max(workers, 1)).
Builder row: recipe + TFDS ArrayRecord writing of fresh volumes (the NIfTI files already exist).
Prints a markdown table; numbers on a shared machine are lower bounds.
"""

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from input_pipeline import augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from input_pipeline import builder
from input_pipeline import datasets
from input_pipeline import pipeline
from input_pipeline import recipes

AUGMENTATIONS = {
    'none': {},
    'flips+rotation+scaling': {'flip_h': 0.5, 'flip_v': 0.5, 'rotate': {'p': 0.5, 'degrees': 15},
                               'scale': {'p': 0.5, 'range': (0.8, 1.2)}},
    'elastic': {'elastic': {'p': 1.0, 'alpha': 4.0, 'sigma': 12.0}},
}


def loader_rate(dataset, aug_config, workers: int, batches: int, batch_size: int = 16) -> float:
  aug = augment.Augment.from_config(aug_config)
  ds = pipeline.train_dataset(dataset.source(range(dataset.num_folds)), batch_size=batch_size,
                              seed=0, augment=aug if aug.ops else None)
  it = pipeline.make_iterator(ds, worker_count=workers, worker_buffer_size=4)
  try:
    for _ in range(max(4, 2 * workers)):  # warm-up: worker start, first reads
      next(it)
    start = time.perf_counter()
    for _ in range(batches):
      next(it)
    return batches * batch_size / (time.perf_counter() - start)
  finally:
    if hasattr(it, 'close'):
      it.close()


def builder_rate(data_dir: pathlib.Path, num_subjects: int) -> float:
  """Volumes/s of recipe + record writing, NIfTI already on disk."""
  source = datasets.resolve('synthetic_atlas', data_dir, None, num_subjects=num_subjects)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix='bench-build-'))
  try:
    start = time.perf_counter()
    builder.build(source=source.name, layout=source.layout, recipe=recipes.RECIPES['agmr_2p5d'],
                  data_dir=tmp, manual_dir=source.manual_dir)
    return num_subjects / (time.perf_counter() - start)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default='/tmp/agmr_bench_data')
  parser.add_argument('--num_subjects', type=int, default=5)
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--workers', default='0,1,2')
  args = parser.parse_args()
  flags.FLAGS(sys.argv[:1])  # grain's worker processes read absl flags; argparse owns the CLI
  logging.set_verbosity(logging.WARNING)
  data_dir = pathlib.Path(args.data_dir)
  path = datasets.prepare('synthetic_atlas', recipes.RECIPES['agmr_2p5d'], data_dir=data_dir,
                          num_subjects=args.num_subjects)
  dataset = pipeline.SliceDataset(path)
  rows = ['| what | workers | slices/s | slices/s per core |', '|---|---|---|---|']
  for name, config in AUGMENTATIONS.items():
    for workers in (int(w) for w in args.workers.split(',')):
      rate = loader_rate(dataset, config, workers, args.batches)
      rows.append(f'| loader, {name} | {workers} | {rate:.0f} | {rate / max(workers, 1):.0f} |')
      print(rows[-1], flush=True)
  vol_rate = builder_rate(data_dir, args.num_subjects)
  rows.append(f'| builder (agmr_2p5d records) | 0 | {vol_rate:.2f} volumes/s | |')
  print(f'\n{os.cpu_count()} CPUs, 192x192x4 float16 records, batch 16\n')
  print('\n'.join(rows))


if __name__ == '__main__':
  main()
