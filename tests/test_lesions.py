"""Lesion-wise challenge metrics (ISLES 2022 definitions) on hand-made volumes."""

import numpy as np
import pytest

from agmr_jax.evaluation import lesions
from agmr_jax.evaluation import metrics


def _vol(*boxes, shape=(12, 12, 12)):
  """A mask with the given boxes ((x0, x1), (y0, y1), (z0, z1)) set."""
  mask = np.zeros(shape, bool)
  for (x0, x1), (y0, y1), (z0, z1) in boxes:
    mask[x0:x1, y0:y1, z0:z1] = True
  return mask


A = ((1, 3), (1, 3), (1, 3))  # 8 voxels
B = ((6, 8), (6, 8), (6, 8))  # 8 voxels
C = ((9, 11), (1, 3), (1, 3))  # 8 voxels


def test_both_empty_is_perfect():
  empty = _vol()
  m = lesions.lesion_metrics(empty, empty)
  assert (m['lesion_f1'], m['lesion_count_diff'], m['volume_diff_ml']) == (1.0, 0, 0.0)


def test_one_empty_mask_scores_zero():
  m = lesions.lesion_metrics(_vol(), _vol(A, B))  # prediction empty: two misses
  assert (m['lesion_f1'], m['lesion_count_diff'], m['lesion_fn']) == (0.0, 2, 2)
  assert m['volume_diff_ml'] == pytest.approx(16 / 1000)
  m = lesions.lesion_metrics(_vol(A), _vol())  # truth empty: one false positive
  assert (m['lesion_f1'], m['lesion_count_diff'], m['lesion_fp']) == (0.0, 1, 1)


def test_a_miss_and_a_false_positive():
  # Truth: A and B; prediction: A (hit), C (false positive); B is missed.
  m = lesions.lesion_metrics(_vol(A, C), _vol(A, B))
  assert (m['lesion_tp'], m['lesion_fp'], m['lesion_fn']) == (1, 1, 1)
  assert m['lesion_f1'] == pytest.approx(1 / (1 + (1 + 1) / 2))  # 0.5
  assert m['lesion_count_diff'] == 0 and m['volume_diff_ml'] == 0.0


def test_one_hit_and_one_miss():
  m = lesions.lesion_metrics(_vol(A), _vol(A, B))
  assert (m['lesion_tp'], m['lesion_fp'], m['lesion_fn']) == (1, 0, 1)
  assert m['lesion_f1'] == pytest.approx(2 / 3)
  assert m['volume_diff_ml'] == pytest.approx(8 / 1000)  # 1 mm isotropic without a spacing


def test_a_prediction_entirely_elsewhere_scores_zero():
  m = lesions.lesion_metrics(_vol(C), _vol(A))  # one false positive, one miss, no hit
  assert (m['lesion_tp'], m['lesion_fp'], m['lesion_fn'], m['lesion_f1']) == (0, 1, 1, 0.0)


def test_components_are_26_connected_by_default():
  corner = np.zeros((4, 4, 4), bool)
  corner[1, 1, 1] = corner[2, 2, 2] = True
  assert lesions.components(corner)[1] == 1
  assert lesions.lesion_counts(corner, corner)['n_lesions_truth'] == 1
  assert lesions.components(corner, connectivity=6)[1] == 2


def test_one_voxel_of_overlap_is_a_hit():
  pred = _vol(((2, 3), (2, 3), (2, 3)))  # a single voxel inside A
  m = lesions.lesion_metrics(pred, _vol(A))
  assert (m['lesion_tp'], m['lesion_fp'], m['lesion_fn'], m['lesion_f1']) == (1, 0, 0, 1.0)
  assert m['volume_diff_ml'] == pytest.approx(7 / 1000)


def test_a_blob_bridging_two_lesions_counts_two_hits():
  truth = _vol(((1, 3), (1, 3), (1, 3)), ((5, 7), (1, 3), (1, 3)))
  bridge = _vol(((1, 7), (1, 3), (1, 3)))
  m = lesions.lesion_metrics(bridge, truth)
  assert (m['lesion_tp'], m['lesion_fp'], m['lesion_fn']) == (2, 0, 0)
  assert m['lesion_f1'] == 1.0
  assert m['lesion_count_diff'] == 1  # two lesions, one predicted component


def test_corner_contact_is_one_lesion_at_26_and_two_at_6():
  corner = np.zeros((4, 4, 4), bool)
  corner[1, 1, 1] = corner[2, 2, 2] = True
  isles = lesions.lesion_metrics(corner, corner)
  atlas = lesions.lesion_metrics(corner, corner, variant='atlas2')
  assert isles['n_lesions_truth'] == 1 and atlas['n_lesions_truth'] == 2
  assert isles['lesion_f1'] == atlas['lesion_f1'] == 1.0
  # The prediction keeps one voxel: ISLES sees its one lesion hit, ATLAS one hit and one miss.
  one = np.zeros_like(corner)
  one[1, 1, 1] = True
  assert lesions.lesion_metrics(one, corner)['lesion_f1'] == 1.0
  assert lesions.lesion_metrics(one, corner, variant='atlas2')['lesion_f1'] == pytest.approx(
      1 / (1 + 1 / 2))


def test_volume_difference_uses_the_anisotropic_voxel_volume():
  m = lesions.lesion_metrics(_vol(A), _vol(A, B), spacing=(0.5, 1.0, 3.0))
  assert m['volume_diff_ml'] == pytest.approx(8 * 1.5 / 1000)
  atlas = lesions.lesion_metrics(_vol(A), _vol(A, B), spacing=(0.5, 1.0, 3.0), variant='atlas2')
  assert atlas['volume_diff_voxels'] == 8.0 and 'volume_diff_ml' not in atlas


def test_case_metrics_rows_carry_the_lesion_metrics_and_summaries_average_them():
  rows = [metrics.case_metrics(_vol(A, C), _vol(A, B), (1.0, 1.0, 2.0)),
          metrics.case_metrics(_vol(A), _vol(A), (1.0, 1.0, 2.0))]
  assert [r['lesion_f1'] for r in rows] == [0.5, 1.0]
  summary = metrics.summarize(rows)
  assert summary['lesion_f1']['mean'] == pytest.approx(0.75)
  assert summary['volume_diff_ml']['mean'] == 0.0
  assert 'lesion_f1' in metrics.format_summary(summary)


@pytest.mark.parametrize('spacing', [(1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (1.0, float('nan'), 1.0),
                                     (1.0, float('inf'), 1.0)])
def test_non_positive_or_non_finite_spacing_is_an_error(spacing):
  with pytest.raises(ValueError, match='must be positive and finite'):
    metrics.case_metrics(_vol(A), _vol(A), spacing)


def test_undefined_connectivities_are_errors():
  with pytest.raises(ValueError, match='6 or 26'):
    lesions.components(_vol(A), connectivity=18)
  with pytest.raises(ValueError, match='1, 2 or 3'):
    metrics.case_metrics(_vol(A), _vol(A), connectivity=4)
  with pytest.raises(ValueError, match='unknown lesion-metric variant'):
    lesions.lesion_metrics(_vol(A), _vol(A), variant='brats')


def _naive(pred, truth, structure):
  """The challenge code's per-lesion loops, written out: the oracle for the vectorised counts."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  t_labels, n_t = ndimage.label(truth, structure)
  p_labels, n_p = ndimage.label(pred, structure)
  tp = sum(bool(np.any((t_labels == k) & pred)) for k in range(1, n_t + 1))
  fp = sum(not np.any((p_labels == k) & truth) for k in range(1, n_p + 1))
  fn = n_t - tp
  f1 = 1.0 if tp + fp + fn == 0 else tp / (tp + (fp + fn) / 2)
  return f1, abs(n_t - n_p)


@pytest.mark.parametrize('seed', range(6))
def test_vectorised_counts_equal_the_per_lesion_loops(seed):
  rng = np.random.default_rng(seed)
  truth = rng.random((14, 12, 10)) > 0.93
  pred = rng.random((14, 12, 10)) > 0.9
  for variant, structure in (('isles22', np.ones((3, 3, 3))), ('atlas2', None)):
    m = lesions.lesion_metrics(pred, truth, variant=variant)
    assert (m['lesion_f1'], m['lesion_count_diff']) == pytest.approx(
        _naive(pred, truth, structure))


def test_refusals_name_what_is_wrong():
  with pytest.raises(ValueError, match=r'^lesion metrics need a 3D volume, got shape \(4, 4\)$'):
    lesions.components(np.zeros((4, 4), bool))
  with pytest.raises(ValueError, match="^unknown lesion-metric variant 'isles'; "
                     'known: isles22, atlas2$'):
    lesions.lesion_metrics(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool), variant='isles')
  with pytest.raises(ValueError, match=r'^prediction \(2, 2, 2\) and truth \(2, 2, 3\) '
                     'differ in shape$'):
    lesions.lesion_metrics(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))
