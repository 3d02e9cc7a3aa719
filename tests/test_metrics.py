"""agmr_jax.metrics: hand-made cases, empty conventions, brute force and medpy as oracles."""

import math
import re
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from agmr_jax.evaluation import lesions
from agmr_jax.evaluation import metrics

SPACING = (0.9, 1.1, 3.0)


def _cube(shape, start, n):
  m = np.zeros(shape, np.uint8)
  m[tuple(slice(s, s + n) for s in start)] = 1
  return m


def _blobs(seed, shape=(18, 16, 10), threshold=0.55):
  """Random smooth lesion-like masks; they also touch the array edges."""
  rng = np.random.default_rng(seed)
  field = ndimage.gaussian_filter(rng.random(shape), sigma=1.5)
  return (field > np.quantile(field, threshold)).astype(np.uint8)


def _brute_force(pred, truth, spacing, connectivity):
  """Independent oracle: surfaces by explicit neighbour checks, all pairwise distances."""
  offsets = [o for o in np.ndindex(3, 3, 3) if o != (1, 1, 1)]
  offsets = [np.subtract(o, 1) for o in offsets]
  offsets = [o for o in offsets if np.abs(o).sum() <= connectivity]

  def surface_points(mask):
    padded = np.pad(mask != 0, 1)  # outside the array is background
    pts = []
    for idx in np.argwhere(mask != 0):
      p = idx + 1
      if any(not padded[tuple(p + o)] for o in offsets):
        pts.append(idx)
    return np.asarray(pts, np.float64) * np.asarray(spacing)

  sp, st = surface_points(pred), surface_points(truth)
  d = cdist(sp, st)
  return d.min(axis=1), d.min(axis=0)


def test_overlap_hand_values():
  # P = 3 voxels, G = 4 voxels, overlap 2.
  pred = np.zeros((4, 4, 4), np.uint8)
  truth = np.zeros((4, 4, 4), np.uint8)
  pred[0, 0, :3] = 1
  truth[0, 0, 1:4] = 1
  truth[1, 1, 1] = 2  # contour class counts as lesion
  row = metrics.case_metrics(pred, truth, SPACING)
  assert (row['tp'], row['n_pred'], row['n_truth']) == (2, 3, 4)
  assert row['dsc'] == pytest.approx(4 / 7)  # 2*2 / (3 + 4)
  assert row['f1'] == pytest.approx(4 / 7)  # 2PR/(P+R) with P = 2/3, R = 1/2
  assert row['precision'] == pytest.approx(2 / 3)
  assert row['recall'] == pytest.approx(1 / 2)
  assert row['voe'] == pytest.approx(1 - 2 / 5)  # union 3 + 4 - 2 = 5
  assert row['rvd'] == pytest.approx(-1 / 4)  # (3 - 4) / 4
  assert row['empty'] == 'none'
  for name in metrics.OVERLAP_METRICS:
    assert getattr(metrics, name)(pred, truth) == pytest.approx(row[name])


def test_identical_masks():
  m = _blobs(0)
  row = metrics.case_metrics(m, m, SPACING)
  assert row['dsc'] == 1.0 and row['voe'] == 0.0 and row['rvd'] == 0.0
  assert row['hd95'] == 0.0 and row['asd'] == 0.0 and row['asd_pred_to_truth'] == 0.0


def test_disjoint_cubes_shifted_along_coarse_axis():
  # 3x3x3 cubes, B = A shifted by k = 5 voxels along z (spacing 3 mm): gap of 2 voxels.
  # A's surface layers z = 0, 1, 2 hold 9, 8 (ring), 9 voxels; the nearest point of B's surface
  # is straight across on B's first layer: 5, 4, 3 voxels. B mirrors A: 3, 4, 5 voxels.
  # Pooled: 18 x 3, 16 x 4, 18 x 5 (52 values, in units of 3 mm).
  # ASD = (54 + 64 + 90) / 52 = 4 -> 12 mm.  HD95: position 0.95 * 51 = 48.45 falls among the
  # 5s (positions 34..51) -> 5 -> 15 mm.  Directed P->G: (9*5 + 8*4 + 9*3) / 26 = 4 -> 12 mm.
  a = _cube((8, 8, 14), (2, 2, 2), 3)
  b = _cube((8, 8, 14), (2, 2, 7), 3)
  row = metrics.case_metrics(a, b, SPACING)
  assert row['hd95'] == pytest.approx(15.0)
  assert row['asd'] == pytest.approx(12.0)
  assert row['asd_pred_to_truth'] == pytest.approx(12.0)
  assert row['dsc'] == 0.0


def test_disjoint_cube_general_formula():
  # n-cube shifted by k >= n along x: layer j of A is (k - j) voxels from B, layer j of B is
  # (j + k - n + 1) from A; layers 0 and n-1 hold n^2 surface voxels, the others 4n - 4.
  n, k, s = 5, 7, SPACING[0]
  a = _cube((16, 9, 9), (1, 2, 2), n)
  b = _cube((16, 9, 9), (1 + k, 2, 2), n)
  counts = [n * n] + [4 * n - 4] * (n - 2) + [n * n]
  d_a = np.repeat([(k - j) * s for j in range(n)], counts)
  d_b = np.repeat([(j + k - n + 1) * s for j in range(n)], counts)
  pooled = np.concatenate([d_a, d_b])
  row = metrics.case_metrics(a, b, SPACING)
  assert row['hd95'] == pytest.approx(np.percentile(pooled, 95))
  assert row['asd'] == pytest.approx(pooled.mean())


def test_cube_shifted_by_one_voxel_along_fine_axis():
  # n = 4, B = A + 1 voxel along x (0.9 mm, the finest axis). A's surface (56 voxels):
  # - its first x-layer (16) is 1 voxel from B's first layer;
  # - the 4x4 face's interior (2x2 = 4) on A's last layer lies inside B; B's last layer is 1 voxel
  #   away, its sides at least 1.1 mm: 0.9 mm;
  # - the rest (36: rings of layers 1..3) lies on B's surface: 0.
  # By symmetry B is the same: pooled 40 x 0.9 mm and 72 x 0.
  # ASD = 0.9 * 40 / 112 = 0.9 * 5 / 14; HD95 = 0.9 (the top 36% are 0.9).
  a = _cube((10, 8, 8), (2, 2, 2), 4)
  b = _cube((10, 8, 8), (3, 2, 2), 4)
  row = metrics.case_metrics(a, b, SPACING)
  assert row['hd95'] == pytest.approx(0.9)
  assert row['asd'] == pytest.approx(0.9 * 5 / 14)
  assert row['dsc'] == pytest.approx(2 * 48 / 128)  # overlap 3 layers of 16


def test_both_empty():
  z = np.zeros((5, 5, 5), np.uint8)
  row = metrics.case_metrics(z, z, SPACING)
  for name in ('dsc', 'precision', 'recall', 'f1'):
    assert row[name] == 1.0
  assert row['voe'] == 0.0 and row['rvd'] == 0.0
  assert all(math.isnan(row[name]) for name in metrics.DISTANCE_METRICS)
  assert row['empty'] == 'both'
  assert math.isnan(metrics.hd95(z, z, SPACING)) and math.isnan(metrics.asd(z, z, SPACING))


def test_one_empty():
  z = np.zeros((5, 5, 5), np.uint8)
  m = _cube((5, 5, 5), (1, 1, 1), 2)
  pred_empty = metrics.case_metrics(z, m, SPACING)
  truth_empty = metrics.case_metrics(m, z, SPACING)
  for row in (pred_empty, truth_empty):
    for name in ('dsc', 'precision', 'recall', 'f1'):
      assert row[name] == 0.0
    assert row['voe'] == 1.0
    assert all(math.isnan(row[name]) for name in metrics.DISTANCE_METRICS)
  assert pred_empty['empty'] == 'pred' and pred_empty['rvd'] == -1.0
  assert truth_empty['empty'] == 'truth' and math.isnan(truth_empty['rvd'])
  with pytest.raises(ValueError, match='surface distances need two non-empty masks'):
    metrics.surface_distances(z, m, SPACING)


def test_bad_inputs():
  with pytest.raises(ValueError, match=re.escape(
      'prediction (3, 3, 3) and truth (3, 3, 4) differ in shape')):
    metrics.case_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))
  with pytest.raises(ValueError, match=r'^spacing \(1\.0, 2\.0\) does not have 3 entries$'):
    metrics.case_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1, 2))  # plain numbers


@pytest.mark.parametrize('connectivity', [1, 3])
@pytest.mark.parametrize('seed', [0, 1])
def test_against_brute_force(seed, connectivity):
  shape = (10, 9, 6)
  pred, truth = _blobs(seed, shape), _blobs(seed + 100, shape)
  d_p, d_g = _brute_force(pred, truth, SPACING, connectivity)
  got_p, got_g = metrics.surface_distances(pred, truth, SPACING, connectivity=connectivity)
  np.testing.assert_allclose(np.sort(got_p), np.sort(d_p), rtol=1e-12)
  np.testing.assert_allclose(np.sort(got_g), np.sort(d_g), rtol=1e-12)
  pooled = np.concatenate([d_p, d_g])
  row = metrics.case_metrics(pred, truth, SPACING, connectivity=connectivity)
  assert row['hd95'] == pytest.approx(np.percentile(pooled, 95), rel=1e-12)
  assert row['asd'] == pytest.approx(pooled.mean(), rel=1e-12)
  assert row['asd_pred_to_truth'] == pytest.approx(d_p.mean(), rel=1e-12)


@pytest.mark.parametrize('connectivity', [1, 3])
@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_against_medpy(seed, connectivity):
  binary = pytest.importorskip('medpy.metric.binary')
  pred, truth = _blobs(seed), _blobs(seed + 50, threshold=0.6)
  if seed == 3:  # a small lesion far from the array edges
    pred, truth = _cube(pred.shape, (5, 4, 3), 3), _cube(pred.shape, (6, 4, 2), 4)
  row = metrics.case_metrics(pred, truth, SPACING, connectivity=connectivity)
  kw = dict(voxelspacing=SPACING, connectivity=connectivity)
  assert row['hd95'] == pytest.approx(binary.hd95(pred, truth, **kw), rel=1e-6)
  assert row['asd'] == pytest.approx(binary.assd(pred, truth, **kw), rel=1e-6)
  assert row['asd_pred_to_truth'] == pytest.approx(binary.asd(pred, truth, **kw), rel=1e-6)
  assert row['dsc'] == pytest.approx(binary.dc(pred, truth), rel=1e-12)
  assert row['precision'] == pytest.approx(binary.precision(pred, truth), rel=1e-12)
  assert row['recall'] == pytest.approx(binary.recall(pred, truth), rel=1e-12)
  assert row['voe'] == pytest.approx(1 - binary.jc(pred, truth), rel=1e-12)
  assert row['rvd'] == pytest.approx(binary.ravd(pred, truth), rel=1e-12)


def test_global_dsc():
  # Case 1: TP 2, |P| 3, |G| 4; case 2: both empty; case 3: TP 0, |P| 0, |G| 1.
  # Pooled: 2 * 2 / (3 + 0 + 0 + 4 + 0 + 1) = 0.5 (per-case mean would be (4/7 + 1 + 0) / 3).
  shape = (4, 4, 4)
  p1, g1 = np.zeros(shape), np.zeros(shape)
  p1[0, 0, :3], g1[0, 0, 1:4], g1[1, 1, 1] = 1, 1, 1
  g3 = np.zeros(shape)
  g3[2, 2, 2] = 1
  pairs = [(p1, g1), (np.zeros(shape), np.zeros(shape)), (np.zeros(shape), g3)]
  assert metrics.global_dsc(pairs) == pytest.approx(0.5)
  rows = [metrics.case_metrics(p, g) for p, g in pairs]
  assert metrics.global_dsc_from_rows(rows) == pytest.approx(0.5)
  assert metrics.global_dsc([(np.zeros(shape), np.zeros(shape))]) == 1.0


def test_summarize_and_format():
  nan = float('nan')
  rows = [
      dict(dsc=0.5, hd95=10.0, asd=2.0, empty='none', tp=1, n_pred=2, n_truth=2),
      dict(dsc=0.7, hd95=20.0, asd=4.0, empty='none', tp=7, n_pred=10, n_truth=10),
      dict(dsc=1.0, hd95=nan, asd=nan, empty='both', tp=0, n_pred=0, n_truth=0),
      dict(dsc=0.0, hd95=nan, asd=nan, empty='pred', tp=0, n_pred=0, n_truth=4),
  ]
  s = metrics.summarize(rows)
  assert s['dsc']['mean'] == pytest.approx(2.2 / 4)
  assert s['dsc']['std'] == pytest.approx(np.std([0.5, 0.7, 1.0, 0.0]))
  assert s['hd95'] == dict(mean=15.0, std=5.0, n=2, num_nan=2)
  assert s['asd']['mean'] == pytest.approx(3.0)
  assert s['global_dsc'] == pytest.approx(2 * 8 / (12 + 16))
  assert (s['num_cases'], s['num_both_empty'], s['num_pred_empty'], s['num_truth_empty']) == (
      4, 1, 1, 0)
  assert metrics.summarize(rows, ddof=1)['hd95']['std'] == pytest.approx(np.std([10, 20], ddof=1))
  assert metrics.format_mean_std(0.5944, 0.21) == '0.594 ± 0.210'
  text = metrics.format_summary(s, digits=2)
  assert text['hd95'] == '15.00 ± 5.00 (2 NaN)'
  assert text['dsc'] == '0.55 ± 0.36'
  assert text['global_dsc'] == '0.57'
  # All-NaN metric: NaN summary, no warning noise.
  only_empty = metrics.summarize([rows[2]])
  assert math.isnan(only_empty['hd95']['mean']) and only_empty['hd95']['num_nan'] == 1


def test_summarize_real_rows():
  rows = [metrics.case_metrics(_blobs(s), _blobs(s + 7), SPACING) for s in range(3)]
  rows.append(metrics.case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4))))
  s = metrics.summarize(rows)
  assert s['hd95']['n'] == 3 and s['hd95']['num_nan'] == 1 and s['num_both_empty'] == 1
  assert s['dsc']['n'] == 4


def _plus_and_square():
  """A 3D plus-shaped truth and a filled square prediction: their surfaces (and so HD95 and ASD)
  differ between the 6- and the 18-neighbourhood erosions."""
  truth = np.zeros((9, 9, 5), bool)
  truth[2:7, 4, 1:4] = truth[4, 2:7, 1:4] = True
  pred = np.zeros_like(truth)
  pred[2:7, 2:7, 1:4] = True
  return pred, truth


def test_distances_default_to_medpys_6_neighbourhood_and_accept_every_connectivity():
  pred, truth = _plus_and_square()
  default = metrics.case_metrics(pred, truth, (1.0, 1.0, 2.0))
  six = metrics.case_metrics(pred, truth, (1.0, 1.0, 2.0), connectivity=1)
  eighteen = metrics.case_metrics(pred, truth, (1.0, 1.0, 2.0), connectivity=2)
  assert default['asd'] == six['asd'] != eighteen['asd']
  _, d_truth = metrics.surface_distances(pred, truth, (1.0, 1.0, 2.0))
  assert len(d_truth) == 26  # The plus's surface under the 6-neighbourhood erosion...
  np.testing.assert_array_equal(
      d_truth, metrics.surface_distances(pred, truth, (1.0, 1.0, 2.0), connectivity=1)[1])
  assert len(metrics.surface_distances(pred, truth, (1.0, 1.0, 2.0), connectivity=2)[1]) == 27
  assert metrics.case_metrics(pred, truth, connectivity=3)['asd'] > 0


def test_lesion_metrics_only_for_3d_volumes_and_when_asked():
  flat = np.zeros((6, 6), bool)
  flat[1:3, 1:3] = True
  row = metrics.case_metrics(flat, flat)
  assert row['dsc'] == 1.0 and 'lesion_f1' not in row
  vol = flat[..., None].repeat(3, axis=2)
  assert 'lesion_f1' not in metrics.case_metrics(vol, vol, lesion_variant=None)
  assert metrics.case_metrics(vol, vol)['lesion_f1'] == 1.0


def test_summaries_of_rows_without_voxel_counts_have_no_global_dsc():
  rows = [{'dsc': 0.5, 'empty': 'none'}, {'dsc': 1.0, 'empty': 'both'}]
  summary = metrics.summarize(rows)
  assert 'global_dsc' not in summary and summary['dsc']['mean'] == 0.75
  assert 'global_dsc' not in metrics.summarize([])


def test_summarize_counts_every_empty_kind_without_warnings():
  m = _cube((6, 6, 6), (1, 1, 1), 3)
  z = np.zeros_like(m)
  rows = [metrics.case_metrics(*pair, SPACING) for pair in ((z, m), (m, z), (z, z), (m, m))]
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # numpy warns on the mean of nothing and std with n <= ddof
    s = metrics.summarize(rows, ddof=1)
    only_empty = metrics.summarize(rows[:1])
  assert (s['num_cases'], s['num_both_empty'], s['num_pred_empty'], s['num_truth_empty']) == (
      4, 1, 1, 1)
  assert s['hd95']['n'] == 1 and math.isnan(s['hd95']['std'])  # one value, ddof=1
  assert math.isnan(only_empty['hd95']['mean']) and only_empty['hd95']['n'] == 0


def test_summarize_is_float64_whatever_the_rows_type():
  values = [0.1, 0.2, 0.7]
  s = metrics.summarize([dict(dsc=np.float32(v)) for v in values])
  exact = np.asarray([np.float32(v) for v in values], np.float64)
  assert s['dsc']['mean'] == float(exact.mean()) and s['dsc']['std'] == float(exact.std())


def test_case_metrics_lesion_metrics_use_its_spacing_and_variant():
  pred, truth = _blobs(1), _blobs(2, threshold=0.7)
  for variant in ('isles22', 'atlas2'):
    expected = lesions.lesion_metrics(pred, truth, SPACING, variant=variant)
    row = metrics.case_metrics(pred, truth, SPACING, lesion_variant=variant)
    assert {k: row[k] for k in expected} == pytest.approx(expected, nan_ok=True)
  isles = lesions.lesion_metrics(pred, truth, SPACING)
  assert expected != isles  # the variants differ on these masks, and so does the spacing:
  assert isles['volume_diff_ml'] != lesions.lesion_metrics(pred, truth)['volume_diff_ml']


def test_surface_distances_of_an_empty_mask_say_so():
  with pytest.raises(ValueError, match='^surface distances need two non-empty masks$'):
    metrics.surface_distances(np.zeros((3, 3, 3)), np.ones((3, 3, 3)))
