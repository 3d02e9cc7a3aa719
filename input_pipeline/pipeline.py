"""The Grain pipeline: slice records -> shuffled, augmented, batched numpy batches.

Training is one chain over batches (random access all the way, so batch k, and with it every
augmentation draw, is fixed by the config seed and k alone):

    batch k -> its record indices (EpochBatches: per-epoch permutation, process shard)
        -> read and decoded into the batch (records.TrainRecords) -> [host augmentation] -> prefetch

By default the random transforms run on the device, inside the jitted train step
(input_pipeline.augment.device), and the host only reads, decodes and batches; the image stays in
the records' float16 until the train step casts it (host augmentation works in float32).

Each process reads a disjoint shard; batches are per-process and become one global batch in the
train loop. The iterator's state is small (the next index) and is checkpointed with the model.

Evaluation does not shuffle: `iter_cases` yields every case of a split as a whole stack of slices
in slice order, so predictions can be reassembled into volumes.
"""

import collections
import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import builder as builder_lib
from input_pipeline import records as records_lib
from input_pipeline import splits as splits_lib

Element = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Case:
  """All slices of one case in slice order, as float32 images and uint8 masks."""
  case_id: str
  images: np.ndarray  # (Z, H, W, C)
  masks: np.ndarray  # (Z, H, W)
  spacing: np.ndarray  # (3,)
  geometry: np.ndarray  # recipes.SliceGeometry vector


class SliceDataset:
  """A built dataset: its records per fold and the metadata written beside them."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    meta_path = self.path / builder_lib.META_FILE
    if not meta_path.exists():
      raise FileNotFoundError(f'{meta_path}: not a built slice dataset (run input_pipeline.build)')
    self.meta = json.loads(meta_path.read_text())
    self._builder = tfds.builder_from_directory(str(self.path))

  @property
  def num_folds(self) -> int:
    return self.meta['num_folds']

  def fold_source(self, fold: int):
    return self._builder.as_data_source(split=f'fold{fold}')

  def source(self, folds: Sequence[int]) -> grain.MapDataset:
    """The records of the given folds, concatenated in fold order."""
    parts = [grain.MapDataset.source(self.fold_source(k)) for k in sorted(folds)]
    return parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)

  def train_records(self, folds: Sequence[int]) -> records_lib.TrainRecords:
    """The image and mask of the records of `source(folds)`, in the same order, for training."""
    info = self._builder.info
    shards = [records_lib.Shard(f.filename, f.skip, f.take) for k in sorted(folds)
              for f in info.splits[f'fold{k}'].file_instructions]
    return records_lib.TrainRecords(
        shards, root=str(self.path), image_shape=info.features['image'].shape,
        image_dtype=info.features['image'].np_dtype, mask_shape=info.features['mask'].shape)

  def records(self, folds: Sequence[int]) -> list[tuple[str, int]]:
    """(case_id, slice_index) of every record of `source(folds)`, in the same order."""
    return [(r[0], r[1]) for k in sorted(folds) for r in self.meta['records'][f'fold{k}']]

  def lesion_pixels(self, folds: Sequence[int]) -> np.ndarray:
    """Lesion pixels of every record of `source(folds)`, in the same order."""
    return np.array([r[2] for k in sorted(folds) for r in self.meta['records'][f'fold{k}']])

  def split_folds(self, test_fold: int, val_fold: int | None) -> dict[str, list[int]]:
    """Folds of the 'train', 'validation' and 'test' splits of a protocol."""
    names = splits_lib.protocol_splits(self.num_folds, test_fold, val_fold)
    return {split: [int(f[len('fold'):]) for f in spec.split('+')]
            for split, spec in names.items()}

  def case_ids(self, folds: Sequence[int]) -> list[str]:
    return sorted(c for c, m in self.meta['cases'].items() if m['fold'] in set(folds))


def oversample_lesions(records: records_lib.TrainRecords, lesion_pixels: np.ndarray, factor: int,
                       case_ids: Sequence[str] | None = None) -> records_lib.TrainRecords:
  """Lists slices with a lesion more often (nnU-Net-style foreground oversampling).

  Lesions fill a few percent of the slices of a stroke volume; repeating those slices makes a short
  run see enough positives without changing which slices exist or how they are augmented.
  Without `case_ids` every lesion slice appears `factor` times. With them (one per record) the
  repeats are balanced by case (lesion_repeats): a 1 ml lesion spans about a fifth of the slices
  of a 100 ml one, so slice-uniform oversampling leaves small lesions rare in what the net sees.
  """
  if factor <= 1:
    return records
  repeats = lesion_repeats(lesion_pixels, factor, case_ids)
  return records.gather(np.repeat(np.arange(len(records)), repeats))


def lesion_repeats(lesion_pixels: np.ndarray, factor: int,
                   case_ids: Sequence[str] | None = None) -> np.ndarray:
  """How many times each record is listed: 1 without lesion; `factor` with one, or, given
  `case_ids`, round(factor * mean / n) for a case with n lesion slices (the mean over the cases
  with lesions), at least 1 and at most factor**2. So each case's lesion slices together get
  about the same share of an epoch, and the epoch keeps about factor x its lesion slices."""
  has_lesion = np.asarray(lesion_pixels) > 0
  if case_ids is None:
    return np.where(has_lesion, factor, 1)
  case_ids = np.asarray(case_ids)
  if case_ids.shape != has_lesion.shape:
    raise ValueError(f'{len(case_ids)} case ids for {len(has_lesion)} records')
  cases, index = np.unique(case_ids, return_inverse=True)
  per_case = np.bincount(index, weights=has_lesion, minlength=len(cases))
  mean = per_case[per_case > 0].mean() if per_case.any() else 1.0
  case_repeats = np.clip(np.round(factor * mean / np.maximum(per_case, 1)), 1, factor**2)
  return np.where(has_lesion, case_repeats[index], 1).astype(int)


class EpochBatches:
  """Record indices of batch k of one process's endless stream of training batches.

  Epoch e is a permutation of all n records drawn from (seed, e) (numpy's Generator: pinned with
  numpy in requirements.txt); process p of P takes every P-th record of it, and its stream is its
  share of epoch 0, then of epoch 1, ..., cut into batches of `batch_size` (a batch may span two
  epochs). Batch k depends on (n, batch_size, seed, p, P, k) alone: any worker computes it, a
  restored iterator continues it. Computed a batch at a time: about 0.5 ms per epoch of 43,000
  records, against Grain's per-element shuffle at about 45 us per record.
  """

  def __init__(self, num_records: int, batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    if num_records < process_count:
      raise ValueError(f'{num_records} records cannot be sharded over {process_count} processes')
    if batch_size < 1:
      raise ValueError(f'batch_size must be positive, got {batch_size}')
    self._n, self._batch, self._seed = num_records, batch_size, seed
    self._p, self._count = process_index, process_count
    self._share = len(range(process_index, num_records, process_count))
    self._epochs = {}

  def __len__(self) -> int:
    return sys.maxsize  # Endless; Grain's iterator state is the next batch's k.

  def __repr__(self) -> str:
    return (f'EpochBatches(n={self._n}, batch={self._batch}, seed={self._seed}, '
            f'process={self._p}/{self._count})')

  def __getstate__(self):
    return {**self.__dict__, '_epochs': {}}

  def __getitem__(self, k: int) -> np.ndarray:
    positions = np.arange(k * self._batch, (k + 1) * self._batch)
    epochs, within = np.divmod(positions, self._share)
    out = np.empty(self._batch, np.int64)
    for e in np.unique(epochs):
      rows = epochs == e
      out[rows] = self.epoch(int(e))[self._p + within[rows] * self._count]
    return out

  def epoch(self, e: int) -> np.ndarray:
    """The permutation of epoch e (the last two are kept)."""
    if e not in self._epochs:
      if len(self._epochs) >= 2:
        self._epochs.pop(min(self._epochs))
      rng = np.random.default_rng([self._seed, e])
      self._epochs[e] = rng.permutation(self._n)
    return self._epochs[e]


class _AugmentBatch:
  """A host augmentation applied to each example of a batch, each with its own generator seeded
  by a draw from the batch's (Grain seeds that one from (seed, k)), so an example's augmentation
  depends on the seed, its batch and its row only."""

  def __init__(self, augment: Callable[[Element, np.random.Generator], Element]):
    self._augment = augment

  def __call__(self, batch: Element, rng: np.random.Generator) -> Element:
    seeds = rng.integers(0, 2**63, size=len(batch['image']))
    rows = [self._augment({k: v[i] for k, v in batch.items()}, np.random.default_rng(s))
            for i, s in enumerate(seeds)]
    return {k: np.stack([r[k] for r in rows]) for k in batch}


def train_dataset(records: records_lib.TrainRecords, *, batch_size: int, seed: int,
                  augment: Callable[[Element, np.random.Generator], Element] | None = None,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """An endless MapDataset of per-process batches (see module docstring).

  Element k is batch k: its record indices (EpochBatches) read and decoded straight into the
  batch arrays (records.TrainRecords.read_batch: the image stays in the stored dtype, float16 by
  default, and the train step casts on the device). With a host `augment` each example is then
  augmented in float32 with a generator drawn from (seed, k, row).
  """
  batches = EpochBatches(len(records), batch_size, seed, process_index, process_count)
  ds = grain.MapDataset.source(batches).seed(seed).map(records.read_batch)
  return ds if augment is None else ds.random_map(_AugmentBatch(augment))


def make_iterator(ds: grain.MapDataset, *, worker_count: int = 0,
                  read_threads: int = 2, worker_buffer_size: int = 2):
  """A checkpointable iterator; workers > 0 prefetch batches in separate processes."""
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4))
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return iter(it_ds)


def iter_cases(dataset: SliceDataset, folds: Sequence[int],
               case_ids: Sequence[str] | None = None) -> Iterator[Case]:
  """Yields each case of the folds (or the given subset) with all its slices in order."""
  source = dataset.source(folds)
  by_case = collections.defaultdict(list)
  for position, (case_id, z) in enumerate(dataset.records(folds)):
    by_case[case_id].append((z, position))
  wanted = sorted(by_case) if case_ids is None else list(case_ids)
  for case_id in wanted:
    if case_id not in by_case:
      raise KeyError(f'case {case_id!r} is not in folds {list(folds)}')
    positions = [p for _, p in sorted(by_case[case_id])]
    recs = [source[p] for p in positions]
    yield Case(case_id=case_id,
               images=np.stack([np.asarray(r['image'], np.float32) for r in recs]),
               masks=np.stack([np.asarray(r['mask'], np.uint8) for r in recs]),
               spacing=np.asarray(recs[0]['spacing'], np.float32),
               geometry=np.asarray(recs[0]['geometry'], np.int64))
