"""Cross-validation bookkeeping/aggregation and the comparison table with Wilcoxon p-values.

Training is replaced by a fake that writes what a finished fold leaves behind (config.json and an
evaluation written by report.write_report), so these tests check the fold configs, skipping,
aggregation arithmetic and the tables without training five networks.
"""

import csv
import json
import pathlib

import numpy as np
import pytest

from agmr_jax import compare as compare_command
from agmr_jax import crossval as crossval_command
from agmr_jax.evaluation import compare
from agmr_jax.evaluation import crossval
from agmr_jax.evaluation import metrics
from agmr_jax.evaluation import report
from input_pipeline.errors import DataError

SPEC = 'configs/unet.py:tiny'
NAN = float('nan')


def _row(case_id, dsc, precision=0.5, recall=0.5, hd95=10.0, asd=3.0, tp=50, n_pred=100,
         n_truth=100):
  row = {'case_id': case_id, 'dsc': dsc, 'precision': precision, 'recall': recall, 'f1': dsc,
         'voe': 1 - dsc, 'rvd': 0.0, 'hd95': hd95, 'asd': asd, 'asd_pred_to_truth': asd,
         'empty': 'none', 'tp': tp, 'n_pred': n_pred, 'n_truth': n_truth}
  return row


def _write_eval(workdir: pathlib.Path, rows, name='test'):
  out = workdir / 'eval' / name
  out.mkdir(parents=True)
  report.write_report(rows, out, workdir.name)


def _fold_rows(k: int):
  """Two cases per fold with distinct, fold-dependent values."""
  rng = np.random.default_rng(k)
  return [_row(f'case{k}_{i}', *rng.uniform(0.2, 0.9, 3), hd95=rng.uniform(2, 30),
               asd=rng.uniform(1, 9), tp=int(rng.integers(10, 90)), n_pred=100, n_truth=120)
          for i in range(2)]


class FakeTrain:
  """Stands in for train.train_and_evaluate: records the configs, writes a finished fold."""

  def __init__(self, evaluate_folds=True):
    self.calls = []
    self.evaluate_folds = evaluate_folds

  def __call__(self, config, workdir):
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
    self.calls.append((config.data.test_fold, config.data.val_fold, config.num_train_steps))
    if self.evaluate_folds:
      _write_eval(workdir, _fold_rows(config.data.test_fold))


def test_crossval_runs_folds_aggregates_and_skips(tmp_path):
  fake = FakeTrain()
  result = crossval.run_crossval(SPEC, tmp_path, overrides=['num_train_steps=3'], train_fn=fake)
  assert fake.calls == [(k, (k + 1) % 5, 3) for k in range(5)]
  fold_means = {m: [] for m in ('dsc', 'precision', 'recall', 'hd95', 'asd', 'global_dsc')}
  for k in range(5):
    rows = _fold_rows(k)
    for m in ('dsc', 'precision', 'recall', 'hd95', 'asd'):
      fold_means[m].append(np.mean([r[m] for r in rows]))
    fold_means['global_dsc'].append(2 * sum(r['tp'] for r in rows) / (2 * 100 + 2 * 120))
  for m, values in fold_means.items():
    assert result['mean'][m] == pytest.approx(np.mean(values), rel=1e-12)
    assert result['std'][m] == pytest.approx(np.std(values), rel=1e-12)
  p, r = np.array(fold_means['precision']), np.array(fold_means['recall'])
  assert result['mean']['f1'] == pytest.approx(np.mean(2 * p * r / (p + r)), rel=1e-12)
  assert result['num_cases'] == 10
  pooled = [x['dsc'] for k in range(5) for x in _fold_rows(k)]
  assert result['pooled'][0]['dsc'] == pytest.approx(np.mean(pooled), rel=1e-12)
  assert result['pooled'][1]['dsc'] == pytest.approx(np.std(pooled), rel=1e-12)
  with (tmp_path / 'crossval.csv').open() as f:
    table = {row['row']: row for row in csv.DictReader(f)}
  assert float(table['mean']['dsc']) == pytest.approx(np.mean(fold_means['dsc']), rel=1e-12)
  dsc_cell = (f"{100 * np.mean(fold_means['dsc']):.2f} ± {100 * np.std(fold_means['dsc']):.2f}")
  assert dsc_cell in (tmp_path / 'crossval.md').read_text()
  # Every fold is evaluated: a second call only aggregates.
  again = crossval.run_crossval(SPEC, tmp_path, overrides=['num_train_steps=3'], train_fn=fake)
  assert len(fake.calls) == 5 and again['mean'] == result['mean']
  # The folds were run with another config: refused, nothing trained.
  with pytest.raises(ValueError, match='num_train_steps'):
    crossval.run_crossval(SPEC, tmp_path, overrides=['num_train_steps=4'], train_fn=fake)
  # A cross-validation root is a run for compare: its folds' test cases are pooled.
  assert len(compare.load_run_cases(tmp_path)) == 10


def test_crossval_refuses_bad_requests(tmp_path):
  with pytest.raises(ValueError, match='leave fold= out'):
    crossval.fold_config('configs/unet.py:tiny,fold=2', 0)
  with pytest.raises(ValueError, match='no field'):
    crossval.fold_config(SPEC, 0, ['data.no_such_field=1'])
  with pytest.raises(ValueError, match='within 0..4'):
    crossval.run_crossval(SPEC, tmp_path, folds=[5], train_fn=FakeTrain())
  with pytest.raises(RuntimeError, match='fold 1 stopped before its test evaluation'):
    crossval.run_crossval(SPEC, tmp_path, folds=[1], train_fn=FakeTrain(evaluate_folds=False))
  assert crossval.fold_config(SPEC, 3, ['data.image_size=(16, 16)']).data.image_size == (16, 16)


@pytest.fixture
def three_runs(tmp_path):
  """Reference A; B = A minus distinct positive DSC steps (all 6 pairs favour A); C = A."""
  dsc_a = [0.80, 0.70, 0.60, 0.75, 0.65, 0.55]
  steps = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
  runs = {}
  for name, dsc in (('A', dsc_a), ('B', np.subtract(dsc_a, steps)), ('C', dsc_a)):
    rows = [_row(f'p{i}', float(d), hd95=5.0 + i + (name == 'B'), asd=2.0 + i / 2)
            for i, d in enumerate(dsc)]
    if name == 'B':
      rows[0].update(hd95=NAN, asd=NAN, empty='pred')
    _write_eval(tmp_path / name, rows)
    runs[name] = str(tmp_path / name)
  return runs


def test_compare_table_and_wilcoxon_hand_values(three_runs, tmp_path, capsys):
  results = compare.run([three_runs['A'], three_runs['B'], three_runs['C']], three_runs['A'],
                        out=str(tmp_path / 'table'))
  a, b, c = results
  assert a['run'] == 'A' and a['reference'] and 'dsc_p' not in a
  # All 6 differences share a sign and have distinct ranks: exact two-sided p = 2 / 2**6.
  assert b['dsc_p'] == pytest.approx(2 / 64, rel=1e-12)
  # HD95: B's case 0 has no distance (empty prediction), 5 pairs remain, all +1 mm (tied ranks).
  assert b['hd95_pairs'] == 5 and b['hd95_p'] < 0.1
  assert b["delta_hd95"] == pytest.approx(7.5 - (7.0 + 8.0 + 9.0 + 10.0 + 11.0) / 5)
  assert c['dsc_p'] == 1.0 and c['delta_asd'] == 0.0  # identical to the reference
  assert b['dsc_mean'] == pytest.approx(np.mean([0.79, 0.68, 0.57, 0.71, 0.60, 0.49]))
  assert b['global_dsc'] == pytest.approx(0.5)
  printed = capsys.readouterr().out
  assert '| A (reference) |' in printed and '0.031' in printed
  assert (tmp_path / 'table.md').read_text() == compare.markdown(results, 'test')
  with (tmp_path / 'table.csv').open() as f:
    assert float(list(csv.DictReader(f))[1]['dsc_p']) == pytest.approx(2 / 64)
  assert (tmp_path / 'table_dsc_boxplot.png').exists()
  with pytest.raises(FileExistsError, match='table.md'):
    compare.run([three_runs['B']], three_runs['A'], out=str(tmp_path / 'table'))


def test_compare_refuses_different_case_sets(three_runs, tmp_path, capsys):
  rows = report.read_cases(pathlib.Path(three_runs['C']) / 'eval' / 'test')
  _write_eval(tmp_path / 'D', [r for r in rows if r['case_id'] != 'p3'] + [_row('p9', 0.5)])
  with pytest.raises(ValueError, match=r"D: lacks \['p3'\], has extra \['p9'\]"):
    compare.run([three_runs['A'], str(tmp_path / 'D')], three_runs['A'])
  for runs_args in (['--runs', three_runs['A'], str(tmp_path / 'D')],  # the old spelling
                    [f"--runs={three_runs['A']},{tmp_path / 'D'}"]):
    with pytest.raises(SystemExit) as exit_info:
      compare_command.main([*runs_args, '--reference', three_runs['A']])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        'error: runs differ in their case sets')
  with pytest.raises(FileNotFoundError, match='no evaluation named'):
    compare.load_run_cases(tmp_path / 'A', 'validation')


def test_read_cases_round_trips_metrics_rows(tmp_path):
  rng = np.random.default_rng(0)
  rows = []
  for i in range(3):
    pred, truth = rng.random((2, 10, 9, 6)) > 0.7
    rows.append({'case_id': f'c{i}', **metrics.case_metrics(pred, truth, (1.0, 1.2, 3.0))})
  empty = np.zeros((4, 4, 4))
  rows.append({'case_id': 'empty', **metrics.case_metrics(empty, empty)})
  _write_eval(tmp_path / 'run', rows)
  back = report.read_cases(tmp_path / 'run' / 'eval' / 'test')
  for original, parsed in zip(rows, back):
    for key, value in original.items():
      if isinstance(value, float) and np.isnan(value):
        assert np.isnan(parsed[key])
      else:
        assert parsed[key] == value, key
  summary = json.loads((tmp_path / 'run' / 'eval' / 'test' / 'summary.json').read_text())
  assert summary['num_both_empty'] == 1
  with pytest.raises(DataError, match='no case rows'):
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'cases.csv').write_text('case_id,dsc\n')
    report.read_cases(tmp_path / 'bad')


def test_compare_tabulates_the_challenge_metrics_and_any_chosen_metric(tmp_path, capsys):
  """Lesion F1 of B is below A's in all 4 cases (distinct gaps): p = 2 / 2**4; a metric that a
  run lacks is refused by name."""
  for name, f1 in (('A', [1.0, 0.9, 0.8, 0.7]), ('B', [0.9, 0.7, 0.5, 0.3])):
    rows = [{**_row(f'p{i}', 0.5), 'lesion_f1': v, 'lesion_count_diff': i,
             'volume_diff_ml': 0.5 * i} for i, v in enumerate(f1)]
    _write_eval(tmp_path / name, rows)
  a, b = compare.run([str(tmp_path / 'A'), str(tmp_path / 'B')], str(tmp_path / 'A'))
  assert b['lesion_f1_p'] == pytest.approx(2 / 16) and b['volume_diff_ml_p'] == 1.0
  assert b['lesion_f1_mean'] == pytest.approx(0.6)
  assert '| Lesion F1 | p | Lesion count diff |' in capsys.readouterr().out
  only = compare.run([str(tmp_path / 'B')], str(tmp_path / 'A'), metric_names=['lesion_f1'])
  assert only[1]['metrics'] == ['lesion_f1'] and 'dsc_p' not in only[1]
  (tmp_path / 'C').mkdir()
  _write_eval(tmp_path / 'C', [_row(f'p{i}', 0.5) for i in range(4)])  # no lesion metrics
  assert 'lesion_f1' not in compare.run([str(tmp_path / 'C')], str(tmp_path / 'A'))[0]['metrics']
  with pytest.raises(ValueError, match="metric 'lesion_f1' is missing"):
    compare.run([str(tmp_path / 'C')], str(tmp_path / 'A'), metric_names=['lesion_f1'])
  with pytest.raises(ValueError, match="unknown metric 'dice'"):
    compare.run([str(tmp_path / 'C')], str(tmp_path / 'A'), metric_names=['dice'])


def test_crossval_table_gains_the_challenge_columns_when_every_case_has_them(tmp_path):
  for k, f1 in ((0, [1.0, 0.5]), (1, [0.25, 0.75])):
    rows = [{**_row(f'c{k}{i}', 0.5), 'lesion_f1': v, 'lesion_count_diff': 1,
             'volume_diff_ml': 2.0 * k} for i, v in enumerate(f1)]
    _write_eval(tmp_path / f'fold={k}', rows)
  result = crossval.aggregate(tmp_path, [0, 1])
  assert result['columns'][-3:] == ['lesion_f1', 'lesion_count_diff', 'volume_diff_ml']
  assert [r['lesion_f1'] for r in result['folds']] == [0.75, 0.5]
  assert result['mean']['lesion_f1'] == pytest.approx(0.625)
  assert result['mean']['volume_diff_ml'] == pytest.approx(1.0)
  assert '| Lesion F1 |' in crossval.markdown(result).splitlines()[0]


def test_crossval_main_trains_two_folds_end_to_end(tiny_built, data_dir, tmp_path, capsys):
  """agmr-crossval's main(argv) on the tiny U-Net: two folds trained, evaluated, tabulated."""
  del tiny_built
  root = tmp_path / 'cv'
  argv = ['--config=configs/unet.py:tiny', f'--workdir_root={root}', '--folds=3,4',
          f'--set=data.data_dir={data_dir}', '--set=num_train_steps=2',
          '--set=eval_every_steps=2', '--set=model_kwargs.features=(4,8,16)']
  assert crossval_command.main(argv) == 0
  out = capsys.readouterr().out
  assert '| fold 3 | 2 |' in out and '| fold 4 | 2 |' in out
  assert f'--workdir {root}' in out.splitlines()[-1]  # the ensemble's predict command
  assert (root / 'crossval.md').exists() and (root / 'fold=3' / 'sweep_point.json').exists()
  table = crossval.aggregate(root, [3, 4])
  assert table['num_cases'] == 4 and 'lesion_f1' in table['columns']
  with pytest.raises(SystemExit) as exit_info:  # Bad folds: one line naming them, exit 1.
    crossval_command.main([*argv[:2], '--folds=7', *argv[3:]])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.startswith('error: folds [7] must be within 0..4')
