"""Slice records and the Grain pipeline: splits, shards, resumable iterators, case iteration."""

import json
import pathlib
import pickle

import numpy as np
import pytest

from input_pipeline import builder as builder_lib
from input_pipeline import datasets
from input_pipeline import pipeline
from input_pipeline import splits
from input_pipeline import synthetic
from input_pipeline.errors import DataError
from input_pipeline.synthetic import tiny as synthetic_tiny


def test_assign_folds_is_deterministic_and_balanced():
  ids = [f'case_{k}' for k in range(23)]
  folds = splits.assign_folds(ids, 5, seed=3)
  assert folds == splits.assign_folds(list(reversed(ids)), 5, seed=3)
  assert sorted(np.bincount(list(folds.values()))) == [4, 4, 5, 5, 5]
  assert folds != splits.assign_folds(ids, 5, seed=4)


def test_protocol_splits_are_disjoint_and_cover_all_folds():
  s = splits.protocol_splits(5, test_fold=4, val_fold=3)
  assert s == {'train': 'fold0+fold1+fold2', 'validation': 'fold3', 'test': 'fold4'}
  assert 'validation' not in splits.protocol_splits(5, test_fold=0, val_fold=None)
  with pytest.raises(ValueError):
    splits.protocol_splits(5, test_fold=2, val_fold=2)


def test_records_hold_every_slice_of_every_case_once(tiny_built, tiny_raw):
  ds = pipeline.SliceDataset(tiny_built)
  meta = ds.meta
  assert len(meta['cases']) == 10
  all_records = ds.records(range(5))
  assert len(all_records) == len(set(all_records)) == 10 * synthetic_tiny.SHAPE[2]
  for fold in range(5):
    source = ds.fold_source(fold)
    keys = [(r['case_id'].decode(), int(r['slice_index'])) for r in source]
    assert keys == [(k[0], k[1]) for k in meta['records'][f'fold{fold}']]
    assert [k[2] for k in meta['records'][f'fold{fold}']] == [
        int(np.count_nonzero(r['mask'])) for r in source]
    assert {c for c, _ in keys} == set(ds.case_ids([fold]))
  record = ds.fold_source(0)[0]
  assert record['image'].shape == (32, 32, 4) and record['image'].dtype == np.float16
  assert record['mask'].shape == (32, 32) and record['mask'].dtype == np.uint8
  np.testing.assert_allclose(record['spacing'], synthetic_tiny.SPACING)


def test_build_twice_reuses_the_records(tiny_built, tiny_raw, tiny_recipe):
  before = (tiny_built / builder_lib.META_FILE).stat().st_mtime_ns
  again = datasets.prepare('synthetic_tiny', tiny_recipe, data_dir=tiny_built.parents[2],
                           num_subjects=10)
  assert again == tiny_built
  assert (tiny_built / builder_lib.META_FILE).stat().st_mtime_ns == before


def _batches(ds, n):
  it = pipeline.make_iterator(ds)
  out = [next(it) for _ in range(n)]
  return it, out


def test_restored_iterator_continues_bit_for_bit(tiny_built):
  ds = pipeline.SliceDataset(tiny_built)
  train = pipeline.train_dataset(ds.train_records([0, 1, 2]), batch_size=4, seed=7)
  _, reference = _batches(train, 9)
  it, first = _batches(train, 4)
  state = it.get_state()
  fresh = pipeline.make_iterator(train)
  fresh.set_state(state)
  rest = [next(fresh) for _ in range(5)]
  for a, b in zip(first + rest, reference):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['mask'], b['mask'])


def _key(element) -> bytes:
  """A slice's identity in a training element (which has no case id or slice index)."""
  return element['image'].tobytes() + element['mask'].tobytes()


def _elements(ds, start: int, stop: int) -> list[dict]:
  """Elements start..stop-1 of a batch-size-1 train_dataset, unbatched."""
  return [{k: v[0] for k, v in ds[i].items()} for i in range(start, stop)]


def test_process_shards_are_disjoint_and_cover_the_split(tiny_built):
  """Each process's train_dataset reads its own third of the shuffled split, all of it once."""
  ds = pipeline.SliceDataset(tiny_built)
  source = ds.train_records([0, 1, 2])
  n = len(source)
  everything = {_key(source.read(i)) for i in range(n)}
  assert len(everything) == n  # Every slice is distinguishable.
  seen = []
  for p in range(3):
    shard = pipeline.train_dataset(source, batch_size=1, seed=5, process_index=p,
                                   process_count=3)
    size = len(range(p, n, 3))
    keys = [_key(e) for e in _elements(shard, 0, size)]
    assert len(set(keys)) == size  # One epoch of the shard: no slice twice.
    seen.append(set(keys))
  assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
  assert seen[0] | seen[1] | seen[2] == everything


def test_epochs_are_reshuffled_and_complete(tiny_built):
  """train_dataset's second epoch holds the same slices as the first, in another order."""
  ds = pipeline.SliceDataset(tiny_built)
  source = ds.train_records([0])
  n = len(source)
  train = pipeline.train_dataset(source, batch_size=1, seed=1)
  first = [_key(e) for e in _elements(train, 0, n)]
  second = [_key(e) for e in _elements(train, n, 2 * n)]
  assert len(set(first)) == n and sorted(first) == sorted(second) and first != second


def test_augmentation_moves_image_and_mask_together(tiny_built):
  """A certain left-right flip in train_dataset: every batch is the plain batch mirrored, image
  and mask alike (same shuffle, same slices)."""
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top
  ds = pipeline.SliceDataset(tiny_built)
  source = ds.train_records([0, 1])
  plain = pipeline.train_dataset(source, batch_size=2, seed=3)
  flipped = pipeline.train_dataset(source, batch_size=2, seed=3,
                                   augment=augment.Augment([(1.0, augment.FlipH())]))
  lesion_batches = 0
  for i in range(12):
    np.testing.assert_array_equal(flipped[i]['image'], plain[i]['image'][:, :, ::-1])
    np.testing.assert_array_equal(flipped[i]['mask'], plain[i]['mask'][:, :, ::-1])
    lesion_batches += int(plain[i]['mask'].any())
  assert lesion_batches > 0  # The masks checked were not all empty.


def test_batches_stay_float16_unless_augmented_on_the_host(tiny_built):
  """Without host augmentation the loader only reads and batches: the records' float16 goes to
  the device as is (the train step casts); the host augmentation works in float32."""
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top
  source = pipeline.SliceDataset(tiny_built).train_records([0, 1])
  for where, dtype in (('device', np.float16), ('host', np.float32)):
    ds = pipeline.train_dataset(source, batch_size=2, seed=3,
                                augment=augment.host_augment('mdanet', where))
    assert ds[0]['image'].dtype == dtype and ds[0]['mask'].dtype == np.uint8


def test_augmented_batches_are_reproducible_and_differ_from_plain_ones(tiny_built):
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top
  ds = pipeline.SliceDataset(tiny_built)
  aug = augment.Augment.from_config(augment.AUGMENT_PRESETS['mdanet'])
  make = lambda: pipeline.train_dataset(ds.train_records([0, 1]), batch_size=2, seed=3, augment=aug)
  a, b = make(), make()
  plain = pipeline.train_dataset(ds.train_records([0, 1]), batch_size=2, seed=3)
  changed = 0
  for i in (0, 5, 11):
    np.testing.assert_array_equal(a[i]['image'], b[i]['image'])
    np.testing.assert_array_equal(a[i]['mask'], b[i]['mask'])
    assert set(np.unique(a[i]['mask'])) <= {0, 1}
    changed += int(not np.array_equal(a[i]['image'], plain[i]['image']))
  assert changed >= 2


def test_iter_cases_yields_whole_cases_in_slice_order(tiny_built):
  ds = pipeline.SliceDataset(tiny_built)
  cases = list(pipeline.iter_cases(ds, [4]))
  assert [c.case_id for c in cases] == ds.case_ids([4])
  for case in cases:
    assert case.images.shape == (synthetic_tiny.SHAPE[2], 32, 32, 4)
    assert case.masks.shape == (synthetic_tiny.SHAPE[2], 32, 32)
    assert case.masks.any()


def test_bad_file_stops_the_build_and_leaves_nothing(tmp_path, tiny_recipe):
  raw = tmp_path / 'raw'
  synthetic.write_dataset('synthetic_tiny', raw, 6)
  bad = raw / 'imagesTr' / 'tiny_003_0000.nii.gz'
  bad.write_bytes(bad.read_bytes()[:200])
  data_dir = tmp_path / 'data'
  with pytest.raises(DataError, match='tiny_003_0000.nii.gz'):
    datasets.prepare('nnunet', tiny_recipe, data_dir=data_dir, manual_dir=raw)
  leftovers = [p for p in data_dir.rglob('*') if p.is_file()]
  assert not [p for p in leftovers if 'array_record' in p.name or p.name.endswith('.json')]


def test_meta_records_source_files(tiny_built, tiny_raw):
  meta = json.loads((tiny_built / builder_lib.META_FILE).read_text())
  case = meta['cases']['tiny_000']
  assert case['images']['T1'].endswith('imagesTr/tiny_000_0000.nii.gz')
  assert case['masks'][0].endswith('labelsTr/tiny_000.nii.gz')


def test_meta_source_paths_hold_from_another_directory(tiny_raw, tiny_recipe, tmp_path,
                                                       monkeypatch):
  # Built with relative paths, then used from elsewhere: evaluation must still find the NIfTIs.
  monkeypatch.chdir(tiny_raw.parent)
  path = datasets.prepare('nnunet', tiny_recipe, data_dir=tmp_path / 'data',
                          manual_dir=tiny_raw.name)
  monkeypatch.chdir(tmp_path)
  meta = json.loads((path / builder_lib.META_FILE).read_text())
  masks = [m for case in meta['cases'].values() for m in case['masks']]
  assert masks and all(pathlib.Path(m).is_file() for m in masks)


def test_lesion_oversampling_repeats_exactly_the_lesion_slices(tiny_built):
  ds = pipeline.SliceDataset(tiny_built)
  folds = [0, 1]
  records, pixels = ds.train_records(folds), ds.lesion_pixels(folds)
  assert 0 < (pixels > 0).sum() < len(pixels)
  over = pipeline.oversample_lesions(records, pixels, 3)
  assert len(over) == len(records) + 2 * int((pixels > 0).sum())
  keys = [_key(over.read(i)) for i in range(len(over))]
  for i in range(len(records)):
    assert keys.count(_key(records.read(i))) == (3 if pixels[i] else 1)
  assert pipeline.oversample_lesions(records, pixels, 1) is records


def test_case_balanced_oversampling_by_hand():
  # Case a: 4 lesion slices of 5; case b: 1 of 3. Mean lesion slices per case 2.5, factor 2:
  # a's lesion slices round(2 * 2.5 / 4) = 1 time, b's round(2 * 2.5 / 1) = 5 times, capped at 4.
  pixels = np.array([0, 9, 9, 9, 9, 0, 3, 0])
  cases = ['a'] * 5 + ['b'] * 3
  np.testing.assert_array_equal(pipeline.lesion_repeats(pixels, 2), [1, 2, 2, 2, 2, 1, 2, 1])
  np.testing.assert_array_equal(pipeline.lesion_repeats(pixels, 2, cases),
                                [1, 1, 1, 1, 1, 1, 4, 1])
  # Cases with equal numbers of lesion slices are oversampled exactly as without balancing.
  np.testing.assert_array_equal(pipeline.lesion_repeats(pixels[:6], 3, ['a'] * 3 + ['b'] * 3),
                                [1, 3, 3, 3, 3, 1])
  with pytest.raises(ValueError, match='2 case ids for 8 records'):
    pipeline.lesion_repeats(pixels, 2, ['a', 'b'])
  # A case without lesion slices does not lower the mean the others are balanced against.
  np.testing.assert_array_equal(
      pipeline.lesion_repeats(np.concatenate([pixels, [0, 0]]), 2, cases + ['c', 'c']),
      [1, 1, 1, 1, 1, 1, 4, 1, 1, 1])


def test_worker_processes_yield_the_same_batches(tiny_built):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  ds = pipeline.SliceDataset(tiny_built)
  train = pipeline.train_dataset(ds.train_records([0, 1]), batch_size=4, seed=2)
  _, in_process = _batches(train, 5)
  it = pipeline.make_iterator(train, worker_count=1)
  try:
    with_worker = [next(it) for _ in range(5)]
  finally:
    it.close()
  for a, b in zip(in_process, with_worker):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_records_of_another_source_folder_are_never_reused(tmp_path, tiny_recipe):
  """Two nnU-Net folders built into one data_dir get their own records; the same folder again
  reuses its own; a changed file makes new ones."""
  first, second = tmp_path / 'first', tmp_path / 'second'
  synthetic.write_dataset('synthetic_tiny', first, 5)
  synthetic.write_dataset('synthetic_tiny', second, 5, seed=1)
  data_dir = tmp_path / 'data'
  a = datasets.prepare('nnunet', tiny_recipe, data_dir=data_dir, manual_dir=first)
  b = datasets.prepare('nnunet', tiny_recipe, data_dir=data_dir, manual_dir=second)
  assert a != b and a.parent.name.startswith('nnunet-') and b.parent.name.startswith('nnunet-')
  cases_a = json.loads((a / builder_lib.META_FILE).read_text())['cases']
  cases_b = json.loads((b / builder_lib.META_FILE).read_text())['cases']
  assert {c['masks'][0] for c in cases_b.values()} <= {
      str(p) for p in (second / 'labelsTr').iterdir()}
  assert cases_a.keys() == cases_b.keys()
  assert datasets.prepare('nnunet', tiny_recipe, data_dir=data_dir, manual_dir=first) == a
  image = first / 'imagesTr' / 'tiny_000_0000.nii.gz'
  image.write_bytes((second / 'imagesTr' / 'tiny_000_0000.nii.gz').read_bytes())
  assert datasets.prepare('nnunet', tiny_recipe, data_dir=data_dir, manual_dir=first) not in (a, b)
  with pytest.raises(DataError, match='manual_dir does not exist'):
    datasets.prepare('nnunet', tiny_recipe, data_dir=data_dir, manual_dir=tmp_path / 'nope')


def test_split_folds_of_the_default_and_a_cross_validation_protocol(tiny_built):
  ds = pipeline.SliceDataset(tiny_built)
  assert ds.split_folds(4, 3) == {'train': [0, 1, 2], 'validation': [3], 'test': [4]}
  assert ds.split_folds(1, None) == {'train': [0, 2, 3, 4], 'test': [1]}


def test_one_lesion_pixel_is_a_lesion_slice_and_factor_2_oversamples(tiny_built):
  np.testing.assert_array_equal(pipeline.lesion_repeats(np.array([0, 1, 5]), 3), [1, 3, 3])
  ds = pipeline.SliceDataset(tiny_built)
  source, pixels = ds.train_records([0]), ds.lesion_pixels([0])
  assert len(pipeline.oversample_lesions(source, pixels, 2)) == len(source) + int((pixels > 0).sum())


def test_as_many_processes_as_records_each_read_one(tiny_built):
  source = pipeline.SliceDataset(tiny_built).train_records([0])
  n = len(source)
  last = pipeline.train_dataset(source, batch_size=1, seed=0, process_index=n - 1,
                                process_count=n)
  assert _elements(last, 0, 1)[0]['image'].shape == source.read(0)['image'].shape  # one per epoch
  with pytest.raises(ValueError, match=f'{n} records cannot be sharded over {n + 1} processes'):
    pipeline.train_dataset(source, batch_size=1, seed=0, process_count=n + 1)


def test_case_balanced_repeats_are_clipped_to_1_and_factor_squared():
  import warnings  # pylint: disable=g-import-not-at-top
  # Nine cases of one lesion slice and one of 30: mean 3.9 lesion slices per case. The big case's
  # round(factor * 3.9 / 30) is 0, raised to 1; the small ones' round(factor * 3.9) is capped.
  pixels, cases = np.ones(39), [f'c{i}' for i in range(9)] + ['big'] * 30
  for factor in (2, 3):
    repeats = pipeline.lesion_repeats(pixels, factor, cases)
    assert repeats.dtype.kind == 'i'
    np.testing.assert_array_equal(repeats, [factor**2] * 9 + [1] * 30)
  assert pipeline.lesion_repeats(pixels, 2, cases).sum() == 9 * 4 + 30
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no lesion anywhere: no mean of nothing
    np.testing.assert_array_equal(
        pipeline.lesion_repeats(np.zeros(4), 2, ['a', 'a', 'b', 'b']), [1, 1, 1, 1])


def test_training_reads_the_records_tfds_decodes(tiny_built):
  """The batch reader returns what TFDS's generic decoder reads, in the order asked."""
  ds = pipeline.SliceDataset(tiny_built)
  records, source = ds.train_records([0, 2]), ds.source([0, 2])
  batch = records.read_batch(list(range(len(records)))[::-1])
  for row, i in enumerate(range(len(records) - 1, -1, -1)):
    np.testing.assert_array_equal(batch['image'][row], source[i]['image'])
    np.testing.assert_array_equal(batch['mask'][row], source[i]['mask'])
  assert batch['image'].dtype == np.float16 and batch['mask'].dtype == np.uint8
  train = pipeline.train_dataset(records, batch_size=3, seed=4)
  indices = pipeline.EpochBatches(len(records), 3, 4)[7]
  for key in ('image', 'mask'):
    np.testing.assert_array_equal(train[7][key], records.read_batch(indices)[key])


def test_epoch_batches_by_hand():
  """Process 1 of 3 over 10 records, batches of 4: its stream is its share (every third record)
  of epoch 0's permutation, then of epoch 1's, ...; batch 1 spans epochs 1 and 2."""
  batches = pipeline.EpochBatches(10, 4, seed=3, process_index=1, process_count=3)
  stream = np.concatenate([batches.epoch(e)[1::3] for e in range(3)])
  np.testing.assert_array_equal(np.concatenate([batches[0], batches[1]]), stream[:8])
  assert sorted(batches.epoch(0)) == list(range(10))
  assert not np.array_equal(batches.epoch(0), batches.epoch(1))
  copy = pickle.loads(pickle.dumps(batches))  # A Grain worker's copy computes the same batches.
  np.testing.assert_array_equal(copy[5], batches[5])
  assert repr(copy) == repr(batches) == 'EpochBatches(n=10, batch=4, seed=3, process=1/3)'
  with pytest.raises(ValueError, match='batch_size must be positive'):
    pipeline.EpochBatches(10, 0, seed=3)


def test_a_record_of_another_size_names_the_dataset_folder(tiny_built):
  from input_pipeline import records as records_lib  # pylint: disable=g-import-not-at-top
  ds = pipeline.SliceDataset(tiny_built)
  right = ds.train_records([1, 3])
  shards = right._shards  # pylint: disable=protected-access
  wrong = records_lib.TrainRecords(shards, root=str(tiny_built), image_shape=(32, 32, 3),
                                   image_dtype=np.float16, mask_shape=(32, 32))
  with pytest.raises(DataError, match=r"fold3.array_record-00000-of-00001: record 1: 'image' "
                     r'holds 8192 bytes, expected 6144 \(\(32, 32, 3\) float16\); rebuild'):
    wrong.read(len(right) - shards[-1].take + 1)
  assert str(tiny_built) in repr(wrong) and 'fold1' in repr(wrong) and 'fold3' in repr(wrong)
  with pytest.raises(IndexError):
    wrong.gather(np.array([len(wrong)]))
