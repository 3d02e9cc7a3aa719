"""Training reads: the image and mask of slice records, decoded straight into a batch.

TFDS's generic reader (`builder.as_data_source()[i]`) parses every record into all seven of its
features, each through its feature class, and Grain's batch then stacks the per-record arrays
again. Training needs two fields, at a fixed shape and dtype, a batch at a time: `TrainRecords`
reads a batch's records from the same ArrayRecord files (the folds' TFDS file instructions, so
any build this project ever wrote reads unchanged), parses each `tf.train.Example` once and
copies its raw `image` and `mask` bytes into one preallocated (B, H, W, C) and one (B, H, W)
array. Records are read one at a time through one reader per file: array_record's data source
starts a thread pool for every multi-record read, and its reader's own multi-record read costs
about 5x the CPU time of single reads (measured: 480 against 92 us per uncompressed 332 KB
record).

Measured on 192x192x4 float16 records (CPU time per record, benchmarks/pipeline_throughput.py):
TFDS's generic decode 96 us against 45 us for the direct decode into the batch row; the read
itself 140 us (uncompressed) or 173 us (zstd). With the batch indices computed per epoch
(pipeline.EpochBatches), one core supplies 3,500 to 4,400 slices/s.

Evaluation and prediction keep TFDS's reader (they need case ids, geometry and spacing, and read
each record once).
"""

from collections.abc import Sequence
import ctypes
import dataclasses
import pathlib
import zlib

from array_record.python import array_record_module
import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from input_pipeline.errors import DataError


READER_OPTIONS = 'readahead_buffer_size:0'  # random access: read what is asked, no more
# glibc malloc options (mallopt's M_TRIM_THRESHOLD, M_MMAP_THRESHOLD): see keep_freed_memory.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_tuned = None  # Set by the first call: whether the options took.


def keep_freed_memory() -> bool:
  """Lets this process keep the memory of freed record buffers instead of returning it to the OS.

  Every record read is a fresh 332 KB bytes object (array_record has no read-into-buffer) and
  every batch a fresh few MB. With glibc's defaults such blocks are mmap-ed or trimmed off the
  heap when freed, so the next one page-faults in again: measured, that doubled the CPU time of a
  record read (340 against 160 us). Raising the mmap and trim thresholds (32 MB, 256 MB) keeps
  the blocks in the heap for reuse; the process then holds up to 256 MB it no longer uses. Once
  per process (the loader's and each Grain worker's); False where the C library is not glibc.
  """
  global _malloc_tuned
  if _malloc_tuned is None:
    try:
      libc = ctypes.CDLL('libc.so.6')
      _malloc_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
                           and libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError):
      _malloc_tuned = False
  return _malloc_tuned


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
      keep_freed_memory()
      self._readers[s] = array_record_module.ArrayRecordReader(self._shards[s].path,
                                                               READER_OPTIONS)
    return self._readers[s]

  @staticmethod
  def _decode(record: bytes, image: np.ndarray, mask: np.ndarray, shard: Shard,
              position: int) -> None:
    features = tf_example_pb2.Example.FromString(record).features.feature
    for name, out in (('image', image), ('mask', mask)):
      values = features[name].bytes_list.value if name in features else ()
      raw = values[0] if len(values) == 1 else None  # (each [0] copies the bytes: take it once)
      if raw is None or len(raw) != out.nbytes:
        got = 'no raw bytes' if raw is None else f'{len(raw)} bytes'
        raise DataError(shard.path, f'record {position}: {name!r} holds {got}, expected '
                        f'{out.nbytes} ({out.shape} {out.dtype}); rebuild the records (remove '
                        'this dataset folder)')
      out[...] = np.frombuffer(raw, out.dtype).reshape(out.shape)
