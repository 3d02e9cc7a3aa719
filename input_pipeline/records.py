"""Training reads: the image and mask of slice records, decoded straight into a batch.

TFDS's generic reader (`builder.as_data_source()[i]`) parses every record into all seven of its
features, each through its feature class, and Grain's batch then stacks the per-record arrays
again. Training needs two fields, at a fixed shape and dtype, a batch at a time: `TrainRecords`
reads a batch's records from the same ArrayRecord files (the folds' TFDS file instructions, so
any build this project ever wrote reads unchanged), parses each `tf.train.Example` once and copies its raw
`image` and `mask` bytes into one preallocated (B, H, W, C) and one (B, H, W) array. Records are
read one at a time through one reader per file: array_record's data source starts a thread pool
for every multi-record read, and its reader's own multi-record read costs about 5x the CPU time
of single reads (measured: 480 against 92 us per uncompressed 332 KB record).

Measured on 192x192x4 float16 records (2 CPU cores, process CPU time per record): zstd read
0.16 ms, TFDS generic decode about 0.13 ms and the batch stack about 0.06 ms, against 0.03 ms for
the direct decode into the batch; see benchmarks/results/pipeline_throughput_cpu.md.

Evaluation and prediction keep TFDS's reader (they need case ids, geometry and spacing, and read
each record once).
"""

from collections.abc import Sequence
import dataclasses
import pathlib
import zlib

from array_record.python import array_record_module
import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from input_pipeline.errors import DataError


READER_OPTIONS = 'readahead_buffer_size:0'  # random access: read what is asked, no more


@dataclasses.dataclass(frozen=True)
class Shard:
  """Records skip .. skip+take-1 of one ArrayRecord file (a TFDS file instruction)."""
  path: str
  skip: int
  take: int


class TrainRecords:
  """Random access to the training fields of one or more folds' records, concatenated in order.

  `shards` are the folds' TFDS file instructions in record order, `root` the dataset folder.
  `gather(indices)` lists records in another order or several times (lesion oversampling)
  without reading anything. Picklable (Grain workers get a copy and open their own readers) with
  a repr that identifies the records.
  """

  def __init__(self, shards: Sequence[Shard], *, root: str, image_shape: tuple[int, ...],
               image_dtype, mask_shape: tuple[int, ...], indices: np.ndarray | None = None):
    self._shards = list(shards)
    self._root = root
    self._offsets = np.cumsum([0] + [s.take for s in self._shards])
    self.image_shape = tuple(image_shape)
    self.image_dtype = np.dtype(image_dtype)
    self.mask_shape = tuple(mask_shape)
    self._indices = None if indices is None else np.asarray(indices, np.int64)
    self._readers = {}

  def __getstate__(self):
    return {**self.__dict__, '_readers': {}}  # Readers hold open files: each process opens its own.

  def __len__(self) -> int:
    return int(self._offsets[-1]) if self._indices is None else len(self._indices)

  def __repr__(self) -> str:
    listed = ('all' if self._indices is None
              else f'n={len(self._indices)} #{zlib.crc32(self._indices.tobytes()):08x}')
    files = '+'.join(f'{pathlib.Path(s.path).name}[{s.skip}:{s.skip + s.take}]'
                     for s in self._shards)
    return f'TrainRecords({self._root}: {files}, {listed})'

  def gather(self, indices: np.ndarray) -> 'TrainRecords':
    """Records `self[indices[0]], self[indices[1]], ...` (indices into this listing)."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f'record indices must lie in [0, {len(self)})')
    base = indices if self._indices is None else self._indices[indices]
    return TrainRecords(self._shards, root=self._root, image_shape=self.image_shape,
                        image_dtype=self.image_dtype, mask_shape=self.mask_shape, indices=base)

  def read_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """{'image': (B, *image_shape) in the stored dtype, 'mask': (B, *mask_shape) uint8}."""
    keys = np.asarray(indices, np.int64)
    if self._indices is not None:
      keys = self._indices[keys]
    images = np.empty((len(keys), *self.image_shape), self.image_dtype)
    masks = np.empty((len(keys), *self.mask_shape), np.uint8)
    which = np.searchsorted(self._offsets, keys, side='right') - 1
    for s in np.unique(which):
      rows = np.flatnonzero(which == s)
      shard = self._shards[s]
      positions = (keys[rows] - self._offsets[s] + shard.skip).tolist()
      reader = self._reader(s)
      for row, position in zip(rows, positions):
        # One read per record: the reader's many-record read costs 5x the CPU (its thread pool).
        self._decode(reader.read([position])[0], images[row], masks[row], shard, position)
    return {'image': images, 'mask': masks}

  def read(self, index: int) -> dict[str, np.ndarray]:
    """One record's {'image', 'mask'} (no batch axis)."""
    batch = self.read_batch([index])
    return {'image': batch['image'][0], 'mask': batch['mask'][0]}

  def _reader(self, s: int):
    if s not in self._readers:
      self._readers[s] = array_record_module.ArrayRecordReader(self._shards[s].path,
                                                               READER_OPTIONS)
    return self._readers[s]

  @staticmethod
  def _decode(record: bytes, image: np.ndarray, mask: np.ndarray, shard: Shard,
              position: int) -> None:
    features = tf_example_pb2.Example.FromString(record).features.feature
    for name, out in (('image', image), ('mask', mask)):
      values = features[name].bytes_list.value if name in features else ()
      if len(values) != 1 or len(values[0]) != out.nbytes:
        got = f'{len(values[0])} bytes' if len(values) == 1 else 'no raw bytes'
        raise DataError(shard.path, f'record {position}: {name!r} holds {got}, expected '
                        f'{out.nbytes} ({out.shape} {out.dtype}); rebuild the records (remove '
                        'this dataset folder)')
      out[...] = np.frombuffer(values[0], out.dtype).reshape(out.shape)
