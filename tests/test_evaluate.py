"""agmr_jax.evaluate on a tiny trained run: reports, checkpoints, no-clobber, bad input, CLI.

The tiny run is trained once per session (`trained_run`, shared with test_predict.py through the
session's data_dir) and its evaluation is the one train.train_and_evaluate wrote at the end.
"""

import copy
import json
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest

from agmr_jax import checkpointing
from agmr_jax import evaluate as evaluate_command
from agmr_jax import evaluate_folder as evaluate_folder_command
from agmr_jax import data
from agmr_jax import optim
from agmr_jax import runs
from agmr_jax import state as state_lib
from agmr_jax.evaluation import compare
from agmr_jax.evaluation import evaluate
from agmr_jax.evaluation import folder
from agmr_jax.evaluation import metrics
from agmr_jax.evaluation import report
from agmr_jax.inference import loading
from agmr_jax.inference import predict
from agmr_jax.training import train
from configs import mdanet
from configs import unet
from input_pipeline import pipeline
from input_pipeline import recipes
from input_pipeline.errors import DataError
from tests import conftest

REPO = pathlib.Path(__file__).resolve().parents[1]


def trained_run(data_dir: pathlib.Path) -> tuple[pathlib.Path, dict]:
  """A tiny U-Net trained 6 steps and evaluated on its test fold; trained once per session."""
  workdir = data_dir / 'runs' / 'unet_tiny'
  if not (workdir / 'eval' / 'test' / 'cases.csv').exists():
    config = conftest.tiny_config(unet, data_dir, write_predictions=True)
    train.train_and_evaluate(config, str(workdir))
  summary = json.loads((workdir / 'eval' / 'test' / 'summary.json').read_text())
  return workdir, summary


@pytest.fixture(scope='module')
def run(tiny_built, data_dir):
  del tiny_built
  return trained_run(data_dir)


def test_evaluation_warns_when_the_records_are_not_the_trained_ones(run, tmp_path, caplog):
  workdir, _ = run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('eval', 'checkpoints'))
  config = runs.load_config(copy)
  evaluate.open_splits(config, copy)
  assert 'the run was trained on records' not in caplog.text  # the same records: no word
  stored = json.loads((copy / 'recipe.json').read_text())
  trained_name = stored['records']['name']
  stored['records'] = {**stored['records'], 'name': 'atlas_r12-0badf00d-x', 'manual_dir': '/old'}
  (copy / 'recipe.json').write_text(json.dumps(stored))
  dataset, _ = evaluate.open_splits(config, copy)
  assert (f'{copy / "recipe.json"}: the run was trained on records atlas_r12-0badf00d-x (cases '
          f'from /old) but the data read now are {trained_name}') in caplog.text
  assert not data.check_same_records(copy, dataset)
  # A run from before the records were recorded: recipe.json holds the recipe's fields alone.
  (copy / 'recipe.json').write_text(json.dumps(stored['recipe']))
  assert runs.read_recipe(copy).name == 'tiny_2p5d' and runs.read_records(copy) is None
  assert data.check_same_records(copy, dataset)


def test_report_files(run):
  workdir, summary = run
  out = workdir / 'eval' / 'test'
  rows = report.read_cases(out)
  assert len(rows) == summary['num_cases'] == 2
  assert summary['run']['checkpoint'] == 'best' and summary['run']['step'] == 6
  assert summary['run']['recipe']['name'] == 'tiny_2p5d'
  assert data.run_recipe(None, workdir).name == 'tiny_2p5d'  # predict reads recipe.json back
  stored = json.loads((workdir / 'recipe.json').read_text())
  assert stored['recipe'] == summary['run']['recipe']
  # The records the run was trained on: named by the synthetic source and the recipe's digest.
  assert stored['records']['name'] == summary['run']['records']
  assert stored['records']['name'].startswith('synthetic_tiny') and 'tiny_2p5d' in (
      stored['records']['name'])
  assert summary['dsc']['mean'] == pytest.approx(np.mean([r['dsc'] for r in rows]), abs=1e-12)
  assert summary['global_dsc'] == pytest.approx(metrics.global_dsc_from_rows(rows), abs=1e-12)
  text = (out / 'summary.md').read_text()
  dsc = metrics.format_mean_std(summary['dsc']['mean'], summary['dsc']['std'])
  assert f'| dsc | {dsc} |' in text
  assert '| global_dsc |' in text
  assert (out / 'dsc_boxplot.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert not [p for p in out.parent.iterdir() if p.name.startswith('.')]  # no staging left


def test_rows_agree_with_the_written_masks(run, tiny_raw):
  """Each CSV row is what metrics.py gives for the written prediction and the source truth."""
  workdir, _ = run
  for row in report.read_cases(workdir / 'eval' / 'test'):
    pred = nib.load(workdir / 'eval' / 'test' / 'predictions' / f"{row['case_id']}.nii.gz")
    truth = nib.load(tiny_raw / 'labelsTr' / f"{row['case_id']}.nii.gz")
    again = metrics.case_metrics(np.asarray(pred.dataobj), np.asarray(truth.dataobj),
                                 truth.header.get_zooms()[:3])
    for name in ('dsc', 'precision', 'recall', 'hd95', 'asd'):
      assert row[name] == pytest.approx(again[name], rel=1e-12)
    assert row['n_pred'] > 0


def test_existing_result_is_not_replaced(run):
  workdir, _ = run
  before = (workdir / 'eval' / 'test' / 'cases.csv').read_bytes()
  with pytest.raises(FileExistsError, match='--overwrite'):
    evaluate.evaluate_run(workdir, overwrite=False)
  assert (workdir / 'eval' / 'test' / 'cases.csv').read_bytes() == before


def test_checkpoint_choice(run):
  workdir, _ = run
  result = evaluate.evaluate_run(workdir, checkpoint='latest', write_predictions=False)
  assert result['out_dir'].name == 'test-latest' and result['step'] == 6
  best = report.read_cases(workdir / 'eval' / 'test')
  # The tiny run validates once, at its last step: best and latest are the same state.
  assert [r['dsc'] for r in result['rows']] == [r['dsc'] for r in best]
  with pytest.raises(FileNotFoundError, match=r'no checkpoint at step 99 \(kept: \[.*6\]\)'):
    evaluate.evaluate_run(workdir, checkpoint='99')
  with pytest.raises(ValueError, match="'best', 'latest' or a step number"):
    checkpointing.parse_checkpoint('newest')
  assert not (workdir / 'eval' / 'test-99').exists()


def test_best_and_latest_are_different_checkpoints_when_they_differ(run, tmp_path):
  """A copy of the run whose best/ holds another state (freshly initialised, saved as step 3 with
  the top score): 'best' evaluates that state, 'latest' the trained step 6."""
  workdir, _ = run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('eval', 'best'))
  config = runs.load_config(copy)
  recipe = data.run_recipe(config, copy)
  model = loading.build_model(config, recipe)
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch=1, total_steps=1)
  other = jax.jit(state_lib.make_init(model, (1, *recipe.slice_shape), tx))(jax.random.key(123))
  ckpt = checkpointing.Checkpointer(copy)
  ckpt.save_best(3, other, score=99.0)
  ckpt.close()
  best = evaluate.evaluate_run(copy, checkpoint='best', write_predictions=False)
  latest = evaluate.evaluate_run(copy, checkpoint='latest', write_predictions=False)
  assert (best['step'], latest['step']) == (3, 6)
  assert best['out_dir'].name == 'test' and latest['out_dir'].name == 'test-latest'
  trained = report.read_cases(workdir / 'eval' / 'test')
  assert [r['dsc'] for r in latest['rows']] == [r['dsc'] for r in trained]
  assert [r['n_pred'] for r in best['rows']] != [r['n_pred'] for r in latest['rows']]


@pytest.mark.parametrize('problem', ['unreadable', 'four_d', 'missing'])
def test_bad_truth_file_names_it_and_writes_nothing(run, tiny_built, tmp_path, monkeypatch,
                                                    problem):
  """The second case's mask goes bad after the build: the first case is already scored when it
  is read, and still nothing of the evaluation remains."""
  workdir, _ = run
  dataset = pipeline.SliceDataset(tiny_built)
  dataset.meta = copy.deepcopy(dataset.meta)
  case_id = report.read_cases(workdir / 'eval' / 'test')[1]['case_id']
  bad = tmp_path / f'{case_id}.nii.gz'
  if problem == 'unreadable':
    bad.write_bytes(b'\x1f\x8b not really a gzip stream')
  elif problem == 'four_d':
    nib.save(nib.Nifti1Image(np.zeros((40, 36, 12, 2), np.uint8), np.eye(4)), bad)
  dataset.meta['cases'][case_id]['masks'] = [str(bad)]
  monkeypatch.setattr(data, 'prepare_data', lambda config: dataset)
  with pytest.raises(DataError, match=re.escape(str(bad))):
    evaluate.evaluate_run(workdir, tta=True, overwrite=False)
  assert not (workdir / 'eval' / 'test-tta').exists()
  assert not [p for p in (workdir / 'eval').iterdir() if p.name.startswith('.')]


def test_cli_refuses_to_overwrite(run):
  workdir, _ = run
  proc = subprocess.run([sys.executable, '-m', 'agmr_jax.evaluate', f'--workdir={workdir}'],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1
  assert f'error: {workdir}/eval/test: exists; pass --overwrite' in proc.stderr


def test_missing_or_untrained_run_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(f'{tmp_path / "nope"}: run folder')):
    evaluate.evaluate_run(tmp_path / 'nope')
  with pytest.raises(FileNotFoundError, match=re.escape(f'{tmp_path / "config.json"}: no config')):
    evaluate.evaluate_run(tmp_path)
  (tmp_path / 'config.json').write_text('{"model": ')
  with pytest.raises(DataError, match=re.escape(f'{tmp_path / "config.json"}: not valid JSON')):
    evaluate.evaluate_run(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json']  # nothing written


def test_build_model_is_train_build_model_with_the_recipes_groups():
  """Training, evaluation and prediction build the network through loading.build_model: the
  recipe's groups reach MDANet."""
  config = mdanet.get_config('tiny,dataset=isles2022')
  model = loading.build_model(config, recipes.RECIPES['mdanet_isles2022'])
  assert type(model).__name__ == 'MDANet' and model.groups == (1, 1)
  assert model.features == tuple(config.model_kwargs.features)
  assert loading.build_model(config, recipes.RECIPES['mdanet_isles2018']).groups == (2, 2)
  assert not hasattr(loading.build_model(unet.get_config('tiny'),
                                          recipes.RECIPES['mdanet_isles2018']), 'groups')


def test_main_evaluates_a_checkpoint_into_its_own_folder(run, capsys):
  """agmr-evaluate's main(argv): the latest checkpoint with the old --flip_tta spelling."""
  workdir, _ = run
  argv = [f'--workdir={workdir}', '--checkpoint=latest', '--flip_tta', '--nowrite_predictions']
  assert evaluate_command.main(argv) == 0
  out = capsys.readouterr()
  assert 'note: --flip_tta is deprecated; use --tta' in out.err
  assert f'wrote {workdir / "eval" / "test-tta-latest"}' in out.out
  rows = report.read_cases(workdir / 'eval' / 'test-tta-latest')
  assert len(rows) == 2 and not (workdir / 'eval' / 'test-tta-latest' / 'predictions').exists()
  with pytest.raises(SystemExit) as exit_info:
    evaluate_command.main(argv)
  assert exit_info.value.code == 1
  assert 'exists; pass --overwrite' in capsys.readouterr().err


def _label_folder(tmp_path, tiny_raw, case_ids):
  gt = tmp_path / 'gt'
  gt.mkdir()
  for case_id in case_ids:
    shutil.copy(tiny_raw / 'labelsTr' / f'{case_id}.nii.gz', gt)
  return gt


def test_evaluate_folder_on_the_runs_predictions_gives_evaluates_table(run, tiny_raw, tmp_path):
  workdir, _ = run
  rows = report.read_cases(workdir / 'eval' / 'test')
  gt = _label_folder(tmp_path, tiny_raw, [r['case_id'] for r in rows])
  assert evaluate_folder_command.main([
      f'--pred={workdir / "eval" / "test" / "predictions"}', f'--gt={gt}',
      f'--out={tmp_path / "report"}']) == 0
  again = report.read_cases(tmp_path / 'report')
  assert [r['case_id'] for r in again] == [r['case_id'] for r in rows]
  for mine, theirs in zip(again, rows):
    for key in (*metrics.METRICS, 'n_truth', 'n_pred', 'tp', 'empty'):
      if key in theirs:
        assert mine[key] == theirs[key] or (np.isnan(mine[key]) and np.isnan(theirs[key])), key
  # The report folder is a run for compare.
  assert set(compare.load_run_cases(tmp_path / 'report')) == {r['case_id'] for r in rows}


@pytest.mark.parametrize('problem', ['missing_prediction', 'missing_label', 'shape', 'affine',
                                     'exists'])
def test_evaluate_folder_refuses_bad_pairs_and_writes_nothing(tiny_raw, tmp_path, capsys,
                                                             problem):
  ids = ['tiny_000', 'tiny_001']
  gt = _label_folder(tmp_path, tiny_raw, ids)
  pred = tmp_path / 'pred'
  shutil.copytree(gt, pred)
  out = tmp_path / 'report'
  name = ids[1]
  if problem == 'missing_prediction':
    (pred / f'{name}.nii.gz').unlink()
    message = f'{pred}: case {name} has a label'
  elif problem == 'missing_label':
    (gt / f'{name}.nii.gz').unlink()
    message = f'{gt}: case {name} has a prediction'
  elif problem in ('shape', 'affine'):
    label = nib.load(gt / f'{name}.nii.gz')
    data = np.asarray(label.dataobj)
    affine = label.affine.copy()
    if problem == 'shape':
      data = data[:-1]
    else:
      affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(data, affine), pred / f'{name}.nii.gz')
    message = f'{pred / name}.nii.gz: ' + ('shape' if problem == 'shape' else 'affine differs')
  else:
    out.mkdir()
    (out / 'mine.txt').write_text('keep')
    message = f'{out}: exists; pass --overwrite'
  with pytest.raises(SystemExit) as exit_info:
    evaluate_folder_command.main([f'--pred={pred}', f'--gt={gt}', f'--out={out}'])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith(f'error: {message}') and len(err.splitlines()) == 1
  if problem == 'exists':
    assert sorted(p.name for p in out.iterdir()) == ['mine.txt']
  else:
    assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]


class _PerfectNetwork:
  """Returns each case's record masks: the network that is always right, as seen through the
  recipe's forward transform (keyed by the exact slice stack it receives)."""

  def __init__(self, dataset, folds):
    self.masks = {np.asarray(c.images, np.float32).tobytes(): (c.masks > 0).astype(np.float32)
                  for c in pipeline.iter_cases(dataset, folds)}

  def __call__(self, variables, images):
    del variables
    return self.masks[np.asarray(images, np.float32).tobytes()]


# What the tiny recipe's resize (40x36 -> 32x32 and back, linear, then threshold 0.5) costs a
# perfect network on the two test cases: the geometry's ceiling on DSC, measured and pinned.
ORACLE_DSC = (0.9718670076726342, 0.9743589743589743)


def test_a_perfect_network_scores_the_geometry_ceiling_through_evaluate_and_predict(
    run, tiny_built, tiny_raw, tmp_path, monkeypatch):
  workdir, _ = run
  dataset = pipeline.SliceDataset(tiny_built)
  folds = [4]
  perfect = _PerfectNetwork(dataset, folds)
  rows = evaluate.evaluate_cases(perfect, None, dataset, folds, out_dir=None)
  dsc = [r['dsc'] for r in rows]
  assert dsc == pytest.approx(ORACLE_DSC, rel=1e-12)
  # The same perfect network through predict (NIfTI in) and evaluate_folder (NIfTI vs NIfTI).
  monkeypatch.setattr(loading, 'load_ensemble', lambda *a, **k: (perfect, None, [0]))
  (tmp_path / 'in').mkdir()
  for row in rows:
    shutil.copy(tiny_raw / 'imagesTr' / f"{row['case_id']}_0000.nii.gz", tmp_path / 'in')
  predict.predict(tmp_path / 'in', tmp_path / 'masks', workdir, threshold=0.5,
                  min_component_mm3=0.0)
  gt = _label_folder(tmp_path, tiny_raw, [r['case_id'] for r in rows])
  again = folder.evaluate_folder(tmp_path / 'masks', gt, tmp_path / 'report')['rows']
  assert [r['dsc'] for r in again] == dsc
