"""TFDS builder that writes one ArrayRecord record per axial slice, without TensorFlow.

    raw NIfTI folder --layout reader--> cases --recipe--> slices --this builder--> ArrayRecord

A dataset is identified by (source, recipe): `source` is a layout name reading a manual_dir
(real ATLAS/ISLES data need registration with their hosts) or a synthetic dataset name, which is
written on first use. Records go to splits `fold0..fold{K-1}` (see splits.py). Each record holds

  image        (H, W, C) in the recipe's storage dtype (float16 by default)
  mask         (H, W) uint8, 0 background / 1 lesion (/ 2 contour with the contour option)
  case_id      the patient (text; comes back as bytes)
  slice_index  z of the slice in the source volume
  num_slices   Z of the source volume
  spacing      (3,) float32 source voxel spacing in mm
  geometry     int64 vector: recipes.SliceGeometry, to map a prediction back into the volume

Next to TFDS's own files the version folder holds `slices_meta.json`: the recipe, the fold of every
case, its source files, and per fold the (case_id, slice_index, lesion pixels) of every record in record order,
so evaluation can gather a case's slices without reading the whole split (and the number of
lesion pixels of each record, for lesion oversampling).

TFDS builds into an `incomplete.*` folder and renames it at the end, and removes it when
generation raises: a bad file stops the build with its DataError and leaves no partial dataset.
"""

import contextlib
import dataclasses
import hashlib
import json
from absl import logging
import os
import pathlib

from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

from input_pipeline import layouts
from input_pipeline import nifti
from input_pipeline import recipes as recipes_lib
from input_pipeline import splits as splits_lib
from input_pipeline.errors import DataError

META_FILE = 'slices_meta.json'
# Bumped whenever what a build writes changes (records or slices_meta.json), so an older build is
# never silently reused: 2 = per-record lesion pixel counts in slices_meta.json.
RECORDS_FORMAT = 2
# The ArrayRecord writer options per codec. TFDS's own writer uses 'group_size:1' (zstd level 3);
# training reads a record in 140 us of CPU uncompressed against 173 us with zstd (192x192x4
# float16; 4,267 against 3,368 slices/s per core through the whole loader, issue 23). The codec is
# a storage detail: it is not part of the records' name, and a build of either codec is reused.
CODECS = {'none': 'group_size:1,uncompressed', 'zstd': 'group_size:1,zstd:3'}
DEFAULT_CODEC = 'none'


def config_name(source: str, recipe: recipes_lib.Recipe) -> str:
  """A readable, collision-free TFDS config name for (source, recipe settings)."""
  fields = json.dumps({'format': RECORDS_FORMAT, **dataclasses.asdict(recipe)}, sort_keys=True,
                      default=str)
  digest = hashlib.sha1(fields.encode()).hexdigest()[:8]
  h, w = recipe.size
  return f'{source}-{recipe.name}-{h}x{w}-{digest}'


class StrokeSlices(tfds.core.GeneratorBasedBuilder):
  """Axial slice records of one stroke dataset under one recipe."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download the dataset from its host (ATLAS: ICPSR/INDI; ISLES: isles-challenge.org) and '
      'pass the folder holding it, unchanged, as --manual_dir.')

  def __init__(self, *, source: str, layout: str, recipe: recipes_lib.Recipe,
               num_folds: int = 5, split_seed: int = 0, **kwargs):
    self._source = source
    self._layout = layout
    self._recipe = recipe
    self._num_folds = num_folds
    self._split_seed = split_seed
    if recipe.modalities is None:
      raise ValueError(f'recipe {recipe.name} must name its modalities to be built')
    config = tfds.core.BuilderConfig(name=config_name(source, recipe))
    super().__init__(config=config, file_format='array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self._recipe.size
    features = tfds.features.FeaturesDict({
        # Raw-bytes encoding: serialising a slice as a proto value list costs ~100 ms,
        # as bytes ~0.6 ms (measured at 192x192x4), and the records are half the size.
        'image': tfds.features.Tensor(shape=(h, w, self._recipe.num_channels),
                                      dtype=np.dtype(self._recipe.storage_dtype),
                                      encoding=tfds.features.Encoding.BYTES),
        'mask': tfds.features.Tensor(shape=(h, w), dtype=np.uint8,
                                     encoding=tfds.features.Encoding.BYTES),
        'case_id': tfds.features.Text(),
        'slice_index': tfds.features.Scalar(dtype=np.int32),
        'num_slices': tfds.features.Scalar(dtype=np.int32),
        'spacing': tfds.features.Tensor(shape=(3,), dtype=np.float32),
        'geometry': tfds.features.Tensor(shape=(recipes_lib.GEOMETRY_LENGTH,), dtype=np.int64),
    })
    return tfds.core.DatasetInfo(
        builder=self, features=features,
        description=f'{self._source} axial slices, recipe {self._recipe.name}')

  def _split_generators(self, dl_manager):
    cases = layouts.LAYOUTS[self._layout](pathlib.Path(dl_manager.manual_dir))
    for case in cases:
      if not case.masks:
        raise DataError(case.root, 'no lesion mask: training datasets need labelled cases')
    folds = splits_lib.assign_folds([c.case_id for c in cases], self._num_folds,
                                    self._split_seed)
    return {f'fold{k}': self._generate_examples([c for c in cases if folds[c.case_id] == k])
            for k in range(self._num_folds)}

  def _generate_examples(self, cases):
    for k, case in enumerate(cases):
      logging.info('  %s (%d/%d of this fold)', case.case_id, k + 1, len(cases))
      image, mask, geometry = nifti.load_case(case, self._recipe.modalities)
      stack = self._recipe.forward(image, mask)
      geometry_vec = stack.geometry.to_array()
      spacing = np.asarray(geometry.spacing, np.float32)
      images = stack.images.astype(self._recipe.storage_dtype)
      for z in range(images.shape[0]):
        yield f'{case.case_id}/{z:05d}', {
            'image': images[z], 'mask': stack.masks[z], 'case_id': case.case_id,
            'slice_index': z, 'num_slices': images.shape[0], 'spacing': spacing,
            'geometry': geometry_vec}

  def write_meta(self, cases_root: pathlib.Path) -> dict:
    """Writes slices_meta.json after a build (idempotent); returns it."""
    path = pathlib.Path(self.data_dir) / META_FILE
    if path.exists():
      return json.loads(path.read_text())
    cases = layouts.LAYOUTS[self._layout](cases_root)
    folds = splits_lib.assign_folds([c.case_id for c in cases], self._num_folds,
                                    self._split_seed)
    records = {}
    for k in range(self._num_folds):
      source = self.as_data_source(split=f'fold{k}')
      records[f'fold{k}'] = [_record_key(source[i]) for i in range(len(source))]
    meta = {
        'source': self._source, 'layout': self._layout, 'num_folds': self._num_folds,
        'split_seed': self._split_seed, 'manual_dir': str(cases_root),
        'recipe': dataclasses.asdict(self._recipe),
        'cases': {c.case_id: {'fold': folds[c.case_id],
                              'images': {m: str(p) for m, p in c.images.items()},
                              'masks': [str(p) for p in c.masks]} for c in cases},
        'records': records,
    }
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)
    return meta


def _record_key(record) -> list:
  """[case_id, slice_index, lesion pixels] of a record."""
  case_id = record['case_id']
  if isinstance(case_id, bytes):
    case_id = case_id.decode()
  return [case_id, int(record['slice_index']), int(np.count_nonzero(record['mask']))]


def build(*, source: str, layout: str, recipe: recipes_lib.Recipe, data_dir: str | os.PathLike,
          manual_dir: str | os.PathLike, num_folds: int = 5, split_seed: int = 0,
          codec: str = DEFAULT_CODEC) -> pathlib.Path:
  """Builds the dataset if it is not built yet; returns its version folder.

  `codec` ('none' or 'zstd', see CODECS) applies to a new build only: records that exist are
  reused whatever their codec (remove the folder to rewrite them)."""
  if codec not in CODECS:
    raise ValueError(f'codec must be one of {sorted(CODECS)}, got {codec!r}')
  builder = StrokeSlices(source=source, layout=layout, recipe=recipe, num_folds=num_folds,
                         split_seed=split_seed, data_dir=os.fspath(data_dir))
  # Absolute, so slices_meta.json's source paths (read by evaluation) hold from any working
  # directory: a build made with data_dir='data' is reused by a later run given its full path.
  manual_dir = pathlib.Path(manual_dir).resolve()
  if not manual_dir.is_dir():
    raise DataError(manual_dir, 'manual_dir does not exist or is not a folder')
  cases = layouts.LAYOUTS[layout](manual_dir)  # fails fast, naming the folder, before TFDS
  if len(cases) < num_folds:
    raise DataError(manual_dir, f'{len(cases)} case(s) cannot fill {num_folds} patient-level folds '
                    '(num_folds / --num_folds / config.data.num_folds)')
  if not (pathlib.Path(builder.data_dir) / META_FILE).exists():
    logging.info('Building %s into %s', builder.builder_config.name, builder.data_dir)
  tfds.disable_progress_bar()  # carriage-return bars garble logs; cases are logged instead
  root, records = pathlib.Path(data_dir).resolve(), pathlib.Path(builder.data_dir).resolve()
  existed = {f for f in _tfds_folders(root, records) if f.exists()}
  try:
    with _array_record_writer(CODECS[codec]):
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  except BaseException:
    _remove_empty(sorted(set(_tfds_folders(root, records)) - existed, key=lambda f: -len(f.parts)))
    raise
  builder.write_meta(manual_dir)
  return pathlib.Path(builder.data_dir)


@contextlib.contextmanager
def _array_record_writer(options: str):
  """TFDS writes ArrayRecord files with fixed options; during one build its ArrayRecord adapter
  is replaced by one writing with `options` (same files, same record order; readers detect the
  codec)."""

  class Adapter(file_adapters.ArrayRecordFileAdapter):

    @classmethod
    def write_examples(cls, path, iterator):
      writer = array_record_module.ArrayRecordWriter(os.fspath(path), options)
      try:
        for _, serialized_example in iterator:
          writer.write(serialized_example)
      finally:
        writer.close()

  key = file_adapters.FileFormat.ARRAY_RECORD
  before = file_adapters.ADAPTER_FOR_FORMAT[key]
  file_adapters.ADAPTER_FOR_FORMAT[key] = Adapter
  try:
    yield
  finally:
    file_adapters.ADAPTER_FOR_FORMAT[key] = before


def codec_of(version_dir: str | os.PathLike) -> str:
  """The codec ('none', 'zstd' or the writer's option string) of a build's first record file."""
  files = sorted(pathlib.Path(version_dir).glob('*.array_record-*'))
  if not files:
    return 'unknown'
  reader = array_record_module.ArrayRecordReader(os.fspath(files[0]))
  try:
    options = reader.writer_options_string()
  finally:
    reader.close()
  return 'none' if 'uncompressed' in options else 'zstd' if 'zstd' in options else options


def _tfds_folders(data_dir: pathlib.Path, version_dir: pathlib.Path) -> list[pathlib.Path]:
  """The folders a TFDS build may create: the records' folder and its parents up to data_dir,
  and the download folder TFDS makes beside them."""
  chain = [version_dir, *version_dir.parents]
  chain = chain[:chain.index(data_dir) + 1] if data_dir in chain else [version_dir]
  downloads = data_dir / 'downloads'
  return chain + ([downloads, *(p for p in downloads.rglob('*') if p.is_dir())]
                  if downloads.is_dir() else [])


def _remove_empty(folders) -> None:
  """A failed build leaves no folder it created (deepest first; a non-empty one stays)."""
  for folder in folders:
    try:
      folder.rmdir()
    except OSError:
      pass
