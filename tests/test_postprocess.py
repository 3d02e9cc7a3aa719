"""Validation-chosen post-processing: component removal, the choice, and its use by evaluation."""

import json

import numpy as np
import pytest

from agmr_jax import data
from agmr_jax import runs
from agmr_jax.evaluation import evaluate
from agmr_jax.evaluation import metrics
from agmr_jax.evaluation import report
from agmr_jax.evaluation import tune
from agmr_jax.inference import loading
from agmr_jax.inference import postprocess
from agmr_jax.inference.postprocess import PostProcess
from tests import test_evaluate

run = test_evaluate.run  # The trained-run fixture, shared.


def _two_blobs() -> np.ndarray:
  mask = np.zeros((8, 8, 8), bool)
  mask[1:3, 1:3, 1:3] = True  # 8 voxels
  mask[6, 6, 6] = True  # 1 voxel
  return mask


def test_small_components_go_by_physical_volume():
  mask = _two_blobs()
  spacing = (1.0, 1.0, 2.0)  # 2 mm3 per voxel: blobs of 16 and 2 mm3
  assert postprocess.remove_small_components(mask, spacing, 2.0).sum() == 9
  kept = postprocess.remove_small_components(mask, spacing, 2.5)
  assert kept.sum() == 8 and not kept[6, 6, 6]
  assert postprocess.remove_small_components(mask, spacing, 16.5).sum() == 0
  assert postprocess.remove_small_components(mask, spacing, 0.0).sum() == 9
  assert mask.sum() == 9  # the input is not modified


def test_diagonal_neighbours_are_one_component():
  mask = np.zeros((4, 4, 4), bool)
  mask[0, 0, 0] = mask[1, 1, 1] = True  # corner-touching: 26-connected
  assert postprocess.remove_small_components(mask, (1, 1, 1), 2.0).sum() == 2


def test_threshold_is_inclusive_and_validated():
  probs = np.array([[[0.29, 0.3, 0.5, 0.9]]], np.float32)
  assert PostProcess(0.3)(probs, (1, 1, 1)).tolist() == [[[False, True, True, True]]]
  assert PostProcess()(probs, (1, 1, 1)).tolist() == [[[False, False, True, True]]]
  with pytest.raises(ValueError, match='threshold'):
    PostProcess(1.0)
  with pytest.raises(ValueError, match='min_component_mm3'):
    PostProcess(0.5, -1.0)


def test_tally_removes_a_stray_voxel_of_an_empty_case():
  """An empty case with one stray voxel scores 0 unless components are removed; the lesion
  case keeps its score, so the tally picks the removal."""
  lesion = np.zeros((8, 8, 8), bool)
  lesion[1:4, 1:4, 1:4] = True  # 27 mm3
  probs_lesion = lesion * np.float32(0.9)
  probs_empty = np.zeros((8, 8, 8), np.float32)
  probs_empty[6, 6, 6] = 0.9
  tally = tune.Tally(postprocess.grid((0.5,), (0.0, 10.0, 100.0)))
  tally.add(probs_lesion, lesion, (1, 1, 1))
  tally.add(probs_empty, np.zeros_like(lesion), (1, 1, 1))
  assert tally.means() == [0.5, 1.0, 0.5]  # 100 mm3 also removes the 27 mm3 lesion
  assert tally.best() == (PostProcess(0.5, 10.0), 1.0)


def test_tally_ties_keep_the_plain_threshold():
  lesion = np.zeros((6, 6, 6), bool)
  lesion[2:4, 2:4, 2:4] = True
  tally = tune.Tally(postprocess.grid())
  tally.add(lesion * np.float32(0.95), lesion, (1, 1, 1))  # every candidate scores 1
  assert tally.best() == (PostProcess(0.5, 0.0), 1.0)
  # Among equal scores away from 0.5, the threshold nearer 0.5 and the smaller volume win.
  probs = lesion * np.float32(0.45)
  tally = tune.Tally(postprocess.grid((0.3, 0.4, 0.5), (0.0, 50.0)))
  tally.add(probs, lesion, (1, 1, 1))
  assert tally.best() == (PostProcess(0.4, 0.0), 1.0)


def test_ties_prefer_the_threshold_nearest_0_5_from_either_side():
  lesion = np.zeros((6, 6, 6), bool)
  lesion[2:4, 2:4, 2:4] = True
  tally = tune.Tally([PostProcess(0.7, 0.0), PostProcess(0.45, 0.0)])
  tally.add(lesion * np.float32(0.95), lesion, (1, 1, 1))  # both score 1
  assert tally.best() == (PostProcess(0.45, 0.0), 1.0)


def test_an_empty_tally_is_refused_even_with_one_candidate():
  with pytest.raises(ValueError, match='no cases were added'):
    tune.Tally([PostProcess()]).means()
  with pytest.raises(ValueError, match='no post-processing candidates'):
    tune.Tally([])


def test_components_under_a_sub_millimetre_volume_go_on_fine_grids():
  mask = np.zeros((8, 8, 8), bool)
  mask[1, 1, 1] = True  # one voxel of 0.125 mm3
  mask[4:6, 4:6, 4:6] = True  # eight voxels, 1 mm3
  kept = postprocess.remove_small_components(mask, (0.5, 0.5, 0.5), 0.5)
  assert not kept[1, 1, 1] and kept[4:6, 4:6, 4:6].all() and kept.sum() == 8


def test_one_runs_choice_is_its_own(tmp_path):
  postprocess.save(tmp_path, PostProcess(0.3, 200.0))
  assert postprocess.load_shared([tmp_path]) == (PostProcess(0.3, 200.0), "the run's choice")


def test_save_and_load(tmp_path):
  assert postprocess.load(tmp_path) == PostProcess()  # nothing chosen: threshold 0.5
  postprocess.save(tmp_path, PostProcess(0.4, 200.0), step=7)
  assert postprocess.load(tmp_path) == PostProcess(0.4, 200.0)
  assert json.loads((tmp_path / postprocess.FILENAME).read_text())['step'] == 7
  (tmp_path / postprocess.FILENAME).write_text('{"threshold": 0.4}')
  with pytest.raises(ValueError, match=postprocess.FILENAME):
    postprocess.load(tmp_path)


def test_training_chooses_on_validation_and_evaluation_applies_it(run):
  workdir, summary = run
  chosen = json.loads((workdir / postprocess.FILENAME).read_text())
  scores = [c['val_dsc'] for c in chosen['candidates']]
  assert len(scores) == len(postprocess.grid())
  assert chosen['val_dsc'] == max(scores) and chosen['split'] == 'validation'
  assert chosen['num_cases'] == 2  # tiny: 10 subjects in 5 folds, one of them validation
  assert chosen['step'] == summary['run']['step']
  assert (summary['run']['threshold'], summary['run']['min_component_mm3']) == (
      chosen['threshold'], chosen['min_component_mm3'])
  # Without post-processing: a separate '-raw' result, equal to thresholding at 0.5.
  raw = evaluate.evaluate_run(workdir, split='test', post=False, write_predictions=False)
  assert raw['out_dir'].name == 'test-raw'
  raw_run = json.loads((raw['out_dir'] / 'summary.json').read_text())['run']
  assert (raw_run['threshold'], raw_run['min_component_mm3']) == (0.5, 0.0)
  # The chosen candidate applied to the written raw probabilities... is what evaluation wrote.
  post = PostProcess(chosen['threshold'], chosen['min_component_mm3'])
  rows = report.read_cases(workdir / 'eval' / 'test')
  config = runs.load_config(workdir)
  dataset = data.prepare_data(config)
  folds = dataset.split_folds(config.data.test_fold, config.data.val_fold)
  predictor, variables, _ = loading.load_predictor(workdir, config, data.recipe_of(dataset))
  volumes = evaluate.source_volumes(predictor, variables, dataset, folds['test'])
  for row, (case_id, probs, truth, geometry) in zip(rows, volumes):
    assert row['case_id'] == case_id
    assert row['dsc'] == metrics.dsc(post(probs, geometry.spacing), truth)


def test_members_share_a_common_choice_or_get_the_plain_threshold(tmp_path):
  a, b, c = (tmp_path / name for name in 'abc')
  for workdir, pp in ((a, PostProcess(0.3, 200.0)), (b, PostProcess(0.3, 200.0)),
                      (c, PostProcess(0.4, 200.0))):
    workdir.mkdir()
    postprocess.save(workdir, pp)
  assert postprocess.load_shared([a, b]) == (PostProcess(0.3, 200.0),
                                              "the members' common choice")
  assert postprocess.load_shared([a, c]) == (PostProcess(),
                                              'threshold 0.5: the members chose differently')


def test_an_empty_tally_says_so_and_removal_returns_a_boolean_mask():
  with pytest.raises(ValueError, match='^no cases were added$'):
    tune.Tally([PostProcess()]).means()
  ones = np.ones((2, 2, 2), np.uint8)
  for min_mm3 in (0.0, 1.0):
    kept = postprocess.remove_small_components(ones, (1.0, 1.0, 1.0), min_mm3)
    assert kept.dtype == bool and kept.all()
