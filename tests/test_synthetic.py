"""Tests of the synthetic stroke datasets (input_pipeline.synthetic).

The ATLAS-like volume is big, so it is written once per module (2 subjects). Run with -s to see
the per-subject write times.
"""

import json
import os
import pathlib
import re
import time

import nibabel as nib
import numpy as np
import pytest

from input_pipeline import synthetic
from input_pipeline.synthetic import lesions as lesions_lib

ATLAS_SEED = 35  # subject 0 has no lesion, subject 1 has three: both mask-file cases


def _write_timed(name, root, num_subjects, seed):
  start = time.perf_counter()
  ids = synthetic.write_dataset(name, root, num_subjects, seed=seed)
  took = (time.perf_counter() - start) / num_subjects
  sizes = sum(p.stat().st_size for p in pathlib.Path(root).rglob('*') if p.is_file())
  print(f'\n{name}: {took:.2f} s per subject (first call loads templates), '
        f'{sizes / num_subjects / 1e6:.1f} MB per subject')
  return ids


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  """name -> (root, ids) for every synthetic dataset, 2 subjects each."""
  base = tmp_path_factory.mktemp('synthetic')
  out = {}
  for name in synthetic.SYNTHETIC:
    root = base / name
    seed = ATLAS_SEED if name == 'synthetic_atlas' else 0
    out[name] = (root, _write_timed(name, root, 2, seed))
  return out


def _files(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file())


def _load(path):
  img = nib.load(str(path))
  return np.asarray(img.dataobj), img


def _meta(root):
  return json.loads((root / 'synthetic.json').read_text())


def test_registry():
  assert {n: layout for n, (_, layout) in synthetic.SYNTHETIC.items()} == {
      'synthetic_atlas': 'atlas_r12', 'synthetic_isles2018': 'isles2018',
      'synthetic_isles2022': 'isles2022', 'synthetic_isles2017': 'isles2017',
      'synthetic_tiny': 'nnunet', 'synthetic_tiny_ct': 'nnunet', 'synthetic_tiny_mri': 'nnunet'}
  with pytest.raises(ValueError, match="unknown synthetic dataset 'synthetic_nope'; known: "
                                       'synthetic_atlas, synthetic_isles2017, '):
    synthetic.write_dataset('synthetic_nope', '/nonexistent/x', 1)


def test_atlas_tree_and_volumes(written):
  root, ids = written['synthetic_atlas']
  assert ids == ['031000', '031001']
  meta = _meta(root)
  assert (meta['name'], meta['seed'], meta['num_subjects']) == ('synthetic_atlas', ATLAS_SEED, 2)
  counts = [len(c['lesions']) for c in meta['cases']]
  assert counts == [0, 3]
  expected = ['synthetic.json']
  for sid, n in zip(ids, counts):
    stem = f'Site1/{sid}/t01/{sid}'
    expected.append(f'{stem}_t1w_deface_stx.nii.gz')
    expected += [f'{stem}_LesionSmooth_stx.nii.gz'] + [
        f'{stem}_LesionSmooth_{k}_stx.nii.gz' for k in range(1, max(n, 1))]
  assert _files(root) == sorted(expected)
  mni_affine = lesions_lib.mni_maps()['affine']
  brain = lesions_lib.mni_maps()['brain'] > 0
  for case in meta['cases']:
    folder = root / 'Site1' / case['id'] / 't01'
    t1, img = _load(folder / f'{case["id"]}_t1w_deface_stx.nii.gz')
    assert t1.shape == (197, 233, 189) and t1.dtype == np.int16
    np.testing.assert_allclose(img.affine, mni_affine)
    assert t1.min() >= 0 and t1.max() > 300
    union = np.zeros(t1.shape, bool)
    for path in sorted(folder.glob('*LesionSmooth*')):
      mask, mimg = _load(path)
      assert mask.dtype == np.uint8 and mask.shape == t1.shape
      np.testing.assert_allclose(mimg.affine, mni_affine)
      assert set(np.unique(mask)) <= {0, 1}
      union |= mask > 0
    assert int(union.sum()) == case['lesion_voxels']
    assert not (union & (t1 == 0)).any()  # lesions lie in the (jittered, skull-stripped) brain
    # The jitter is a few mm: lesions stay close to the template brain.
    assert not (union & ~_dilate(brain, 6)).any()


def _dilate(mask, iterations):
  from scipy import ndimage
  return ndimage.binary_dilation(mask, iterations=iterations)


def _best_threshold_dice(image, mask, region):
  """Best Dice of `image < t` or `image > t` inside `region`, over all thresholds t."""
  values, target = image[region], mask[region]
  hits = target[np.argsort(values, kind='stable')]
  total, n = hits.sum(), np.arange(1, hits.size + 1)
  below = np.cumsum(hits)
  above = total - np.concatenate([[0], below[:-1]])
  return max((2 * below / (n + total)).max(), (2 * above / (hits.size - n + 1 + total)).max())


def test_atlas_global_threshold_cannot_segment(written):
  root, _ = written['synthetic_atlas']
  case = _meta(root)['cases'][1]
  folder = root / 'Site1' / case['id'] / 't01'
  t1, _ = _load(folder / f'{case["id"]}_t1w_deface_stx.nii.gz')
  mask = np.zeros(t1.shape, bool)
  for path in folder.glob('*LesionSmooth*'):
    mask |= _load(path)[0] > 0
  assert mask.sum() > 1000
  dice = _best_threshold_dice(t1, mask, t1 > 0)
  print(f'\nbest global threshold Dice: {dice:.3f} ({int(mask.sum())} lesion voxels)')
  assert dice < 0.5


def test_atlas_matches_generator_and_mask_in_brain(written):
  root, ids = written['synthetic_atlas']
  case = synthetic.atlas_subject(synthetic.subject_rng('atlas_r12', ATLAS_SEED, 1))
  t1, _ = _load(root / 'Site1' / ids[1] / 't01' / f'{ids[1]}_t1w_deface_stx.nii.gz')
  np.testing.assert_array_equal(t1, np.round(case['T1']).astype(np.int16))
  assert len(case['masks']) == 3
  for mask in case['masks']:
    assert mask.any() and not (mask.astype(bool) & ~case['brain']).any()
  assert np.isfinite(case['T1']).all()


ISLES_SPECS = {
    # name: (case folder -> relative files, in-plane shape, spacing, modalities)
    'synthetic_isles2018': ((256, 256), 5.0, ('CT', 'CT_CBF', 'CT_CBV', 'CT_MTT', 'CT_Tmax', 'OT')),
    'synthetic_isles2017': ((192, 192), 6.0, ('MR_ADC', 'MR_MTT', 'MR_rCBF', 'MR_rCBV', 'MR_Tmax',
                                              'MR_TTP', 'OT')),
}


@pytest.mark.parametrize('name', sorted(ISLES_SPECS))
def test_smir_trees(written, name):
  root, ids = written[name]
  in_plane, thickness, series = ISLES_SPECS[name]
  prefix = 'case_' if name == 'synthetic_isles2018' else 'training_'
  assert ids == [f'{prefix}1', f'{prefix}2']
  files = _files(root)
  assert 'synthetic.json' in files
  seen_ids = set()
  for case_id in ids:
    mine = [f for f in files if f.startswith(case_id + '/')]
    assert len(mine) == len(series)
    grids = []
    for tag in series:
      (match,) = [f for f in mine if f.split('/')[1].rsplit('.', 1)[0] == f'SMIR.Brain.XX.O.{tag}']
      folder, fname = match.split('/')[1:]
      assert fname == folder + '.nii'  # uncompressed, named like its folder
      seen_ids.add(int(folder.rsplit('.', 1)[1]))
      data, img = _load(root / match)
      assert data.shape[:2] == in_plane and 8 <= data.shape[2] <= 24
      assert img.header.get_zooms()[2] == pytest.approx(thickness)
      assert np.isfinite(img.get_fdata()).all()
      grids.append((data.shape, img.affine))
      if tag == 'OT':
        assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 1}
    assert all(s == grids[0][0] and np.allclose(a, grids[0][1]) for s, a in grids)
  assert len(seen_ids) == len(series) * len(ids)  # one unique id per file


def test_isles2022_tree(written):
  root, ids = written['synthetic_isles2022']
  assert ids == ['sub-strokecase0001', 'sub-strokecase0002']
  expected = ['dataset_description.json', 'synthetic.json']
  for sub in ids:
    stem = f'{sub}_ses-0001'
    expected += [f'{sub}/ses-0001/dwi/{stem}_dwi.nii.gz', f'{sub}/ses-0001/dwi/{stem}_adc.nii.gz',
                 f'{sub}/ses-0001/anat/{stem}_FLAIR.nii.gz',
                 f'derivatives/{sub}/ses-0001/{stem}_msk.nii.gz']
  assert _files(root) == sorted(expected)
  for path in sorted(root.rglob('*.nii.gz')):
    data, img = _load(path)
    assert data.shape == (98, 116, 94) and img.header.get_zooms() == (2.0, 2.0, 2.0)
    assert np.isfinite(img.get_fdata()).all()
  for case in _meta(root)['cases']:
    sub = case['id']
    mask, _ = _load(root / 'derivatives' / sub / 'ses-0001' / f'{sub}_ses-0001_msk.nii.gz')
    assert set(np.unique(mask)) == {0, 1} and int(mask.sum()) == case['lesion_voxels']


# Files of subject 0 (seed 0): (int16 image, key), (scaled int16 map, key), mask.
_SUBJECT0_FILES = {
    'isles2018': ('case_1/SMIR.Brain.XX.O.{}.{}/SMIR.Brain.XX.O.{}.{}.nii',
                  [('CT', 'CT', 345000), ('CBF', 'CT_CBF', 345001), ('mask', 'OT', 345005)]),
    'isles2017': ('training_1/SMIR.Brain.XX.O.{}.{}/SMIR.Brain.XX.O.{}.{}.nii',
                  [('ADC', 'MR_ADC', 188000), ('Tmax', 'MR_Tmax', 188004), ('mask', 'OT', 188006)]),
}


@pytest.mark.parametrize('layout', ['isles2018', 'isles2017', 'isles2022'])
def test_isles_generators(written, layout):
  make = getattr(synthetic, f'{layout}_subject')
  first = make(synthetic.subject_rng(layout, 0, 0))
  other = make(synthetic.subject_rng(layout, 1, 0))
  images = [k for k, v in first.items() if k not in ('mask', 'brain', 'affine')]
  for key in images + ['mask']:
    assert np.isfinite(first[key]).all()
  assert any(first[k].shape != other[k].shape or not np.array_equal(first[k], other[k])
             for k in images)
  assert first['mask'].dtype == np.uint8 and first['mask'].any()
  assert not (first['mask'].astype(bool) & ~first['brain']).any()
  for key in images:  # skull-stripped maps are zero outside the brain (CT is not)
    assert key == 'CT' or not first[key][~first['brain']].any()
  # Same seed, same arrays: the written subject 0 equals a fresh draw.
  root, _ = written[f'synthetic_{layout}']
  if layout == 'isles2022':
    stem = 'sub-strokecase0001_ses-0001'
    files = [('DWI', f'sub-strokecase0001/ses-0001/dwi/{stem}_dwi.nii.gz'),
             ('mask', f'derivatives/sub-strokecase0001/ses-0001/{stem}_msk.nii.gz')]
  else:
    pattern, series = _SUBJECT0_FILES[layout]
    files = [(key, pattern.format(tag, i, tag, i)) for key, tag, i in series]
  for key, rel in files:
    img = nib.load(str(root / rel))
    if np.issubdtype(img.header.get_data_dtype(), np.floating) or img.dataobj.slope != 1:
      np.testing.assert_allclose(img.get_fdata(), first[key], atol=1.01 * img.dataobj.slope)
    else:
      np.testing.assert_array_equal(np.asarray(img.dataobj), np.round(first[key]))


def test_subject_independent_of_count(written, tmp_path):
  root2, _ = written['synthetic_isles2022']
  root1 = tmp_path / 'one'
  synthetic.write_dataset('synthetic_isles2022', root1, 1, seed=0)
  rel = 'sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_dwi.nii.gz'
  np.testing.assert_array_equal(_load(root1 / rel)[0], _load(root2 / rel)[0])


def test_refuses_to_overwrite(tmp_path):
  root = tmp_path / 'data'
  root.mkdir()
  (root / 'keep.txt').write_text('mine')
  with pytest.raises(FileExistsError, match=re.escape(
      f"refusing to overwrite a non-empty path: '{root}'")):
    synthetic.write_dataset('synthetic_isles2022', root, 1)
  assert os.listdir(root) == ['keep.txt']
  assert sorted(os.listdir(tmp_path)) == ['data']  # no temp folder left behind
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert synthetic.write_dataset('synthetic_isles2022', empty, 1) == ['sub-strokecase0001']
  assert sorted(os.listdir(tmp_path)) == ['data', 'empty']


def test_lesion_volumes_span_range():
  rng = np.random.default_rng(0)
  volumes = [lesions_lib.sample_volume_mm3(rng, 0.2, 150.0) for _ in range(300)]
  assert min(volumes) < 1000 and max(volumes) > 50000
  assert np.mean(np.array(volumes) < 1000) > 0.1 and np.mean(np.array(volumes) > 50000) > 0.1


@pytest.mark.parametrize('volume', [300.0, 4000.0, 60000.0])
def test_blob_volume_and_shape(volume):
  rng = np.random.default_rng(int(volume))
  mask, soft = lesions_lib.make_blob(rng, volume)
  assert abs(int(mask.sum()) - volume) <= 2
  assert soft.min() >= 0 and soft.max() <= 1 and (soft[mask] >= 0.5).all()
  assert not mask[[0, -1]].any() and not mask[:, [0, -1]].any() and not mask[:, :, [0, -1]].any()
  # Irregular, not a ball: more exposed voxel faces than a voxelised ball of the same volume
  # (which shows about 6 pi r^2 faces: 1.5 times the sphere's area).
  faces = sum(np.count_nonzero(np.diff(np.pad(mask, 1).astype(np.int8), axis=a)) for a in range(3))
  radius = (3 * volume / (4 * np.pi)) ** (1 / 3)
  assert faces > 1.25 * 6 * np.pi * radius ** 2


def test_placed_lesions_stay_in_brain():
  rng = np.random.default_rng(1)
  brain = lesions_lib.mni_maps()['brain'] > 0
  for _ in range(5):
    les = lesions_lib.place_lesion(rng, lesions_lib.sample_volume_mm3(rng, 0.2, 150.0))
    assert les.mask.any() and not (les.mask & ~brain[les.box]).any()


def test_lesion_core_starts_at_the_rim_thickness():
  # A cube of 21 voxels (1 mm): along the middle of an axis the depth (distance to the first
  # voxel outside) is 1, 2, 3, ... from the face. With a 2 mm rim and a 1.5 mm ramp the core map
  # is 0 to depth 2, (depth - 2) / 1.5 on the ramp, 1 from depth 3.5. A cube of 5 (largest
  # depth 3) keeps a core: its rim is capped at a third of that depth.
  core = synthetic._core_map(np.ones((21, 21, 21), bool), rim_vox=2.0)
  np.testing.assert_allclose(core[10, 10, :5], [0.0, 0.0, 2 / 3, 1.0, 1.0], atol=1e-6)
  small = synthetic._core_map(np.ones((5, 5, 5), bool), rim_vox=2.0)
  np.testing.assert_allclose(small[2, 2, :3], [0.0, 2 / 3, 1.0], atol=1e-6)
