r"""Patient-level k-fold cross-validation: the sweep over `fold`, then the MDANet-style table.

Fold k is an ordinary run in `{root}/fold={k}` (a sweep point, agmr_jax/sweeps.py) with the
config's `fold=k` variant (test fold k, validation fold (k+1) % K: configs/common.apply_variant).
`run_crossval` trains and evaluates the unfinished folds one after another in this process; a
cluster can instead run `agmr-sweep --config X --run slurm` on a config whose get_sweep is the
folds, or start every fold's `agmr_jax.main` itself, and then call crossval, which skips finished
folds (runs.status) and only aggregates. A fold made by another config is refused.

Aggregation, as MDANet's Tables 1-2 ("Scores are obtained by 5-fold cross-validation"): each fold
gives its per-case means (DSC, precision, recall, HD95, ASD) and its global DSC; the table prints
mean ± std of these over folds (std with ddof 0), DSC / precision / recall in percent, and an F1
column computed from mean precision and recall, F1 = 2PR / (P + R), which is how MDANet's F1 (a
single number that differs from its DSC) can be reproduced from the other columns. A second row
pools all folds' test cases (every patient is tested exactly once). Writes `{root}/crossval.md`
and `{root}/crossval.csv`, regenerated on every call.
"""

import csv
import os
import pathlib
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from absl import logging

from agmr_jax import config_spec
from agmr_jax import runs
from agmr_jax import sweeps
from agmr_jax.evaluation import metrics
from agmr_jax.evaluation import report
from input_pipeline.errors import DataError

FOLD_METRICS = ('dsc', 'precision', 'recall', 'f1', 'global_dsc', 'hd95', 'asd')
# Challenge metrics, added as columns when every case has them.
LESION_METRICS = ('lesion_f1', 'lesion_count_diff', 'volume_diff_ml')
_CASE_MEANS = ('dsc', 'precision', 'recall', 'hd95', 'asd')
PERCENT = ('dsc', 'precision', 'recall', 'global_dsc')
HEADERS = {'dsc': 'DSC (%)', 'precision': 'Precision (%)', 'recall': 'Recall (%)',
           'f1': 'F1 Score', 'global_dsc': 'DSC global (%)', 'hd95': 'HD95 (mm)',
           'asd': 'ASD (mm)', 'lesion_f1': 'Lesion F1', 'lesion_count_diff': 'Lesion count diff',
           'volume_diff_ml': 'Volume diff (ml)'}


def fold_dir(root, k: int) -> pathlib.Path:
  """{root}/fold={k}; a cross-validation root from before the sweep layout used fold{k}."""
  root = pathlib.Path(root)
  legacy = root / f'fold{k}'
  return legacy if legacy.is_dir() and not (root / f'fold={k}').exists() else root / f'fold={k}'


def fold_points(spec: str, root, folds: Sequence[int], overrides: Sequence[str] = ()
                ) -> list[sweeps.Point]:
  """The sweep points of the folds: the `fold=k` variant, the overrides applied to each."""
  _, variant = config_spec.split_spec(spec)
  if any(item.partition('=')[0] == 'fold' for item in variant.split(',')):
    raise ValueError(f'{spec}: leave fold= out, cross-validation sets it for every fold')
  shared = {}
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'override {item!r} is not key=value')
    shared[key.strip()] = value.strip()
  root = pathlib.Path(root).absolute()
  points = sweeps.make_points(spec, root, shared, grid=[{'fold': k} for k in folds],
                              names=[fold_dir(root, k).name for k in folds])
  return points


def fold_config(spec: str, fold: int, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of fold `fold`: `get_config('{variant},fold={fold}')` plus the overrides."""
  return fold_points(spec, '.', [fold], overrides)[0].config


def run_crossval(spec: str, root, *, folds: Sequence[int] | None = None,
                 overrides: Sequence[str] = (), train_fn: Callable | None = None) -> dict:
  """Trains + evaluates the unfinished folds in order, then aggregates all requested folds.

  Args:
    spec: 'configs/X.py[:variant]'.
    root: folder holding fold=k/.
    folds: which folds (default: all of the config's num_folds).
    overrides: dotted 'key=value' config overrides applied to every fold.
    train_fn: `fn(config, workdir)`; default `training.train.train_and_evaluate`.

  Returns:
    `aggregate`'s result.
  """
  if train_fn is None:
    from agmr_jax.training import train  # pylint: disable=g-import-not-at-top  (training calls evaluation)
    train_fn = train.train_and_evaluate
  root = pathlib.Path(root)
  num_folds = fold_config(spec, 0, overrides).data.num_folds
  folds = list(range(num_folds)) if folds is None else sorted(set(folds))
  if not folds or not all(0 <= k < num_folds for k in folds):
    raise ValueError(f'folds {folds} must be within 0..{num_folds - 1}')
  points = fold_points(spec, root, folds, overrides)
  for point in points:
    if not point.config.final_eval:
      raise ValueError('final_eval is off: the folds would never be evaluated')
    sweeps.check_point(point)
  for k, point in zip(folds, points):
    if sweeps.status(point) == 'finished':
      logging.info('fold %d: already evaluated in %s, skipped', k, point.workdir)
      continue
    print(f'fold {k}/{num_folds - 1}: test fold {point.config.data.test_fold}, validation fold '
          f'{point.config.data.val_fold} -> {point.workdir}', flush=True)
    sweeps.save_point(point)
    train_fn(point.config, str(point.workdir))
    if sweeps.status(point) != 'finished':
      raise RuntimeError(f'{point.workdir}: fold {k} stopped before its test evaluation '
                         '(interrupted or stop_after_steps); run the same command again to resume it')
  result = aggregate(root, folds)
  write_tables(root, result)
  return result


def _f1(precision: float, recall: float) -> float:
  return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def fold_row(rows: Sequence[dict], extra: Sequence[str] = ()) -> dict:
  """One fold's per-case means (of `extra` metrics too), its global DSC and F1 from its mean
  precision and recall."""
  s = metrics.summarize(rows)
  row = {name: s[name]['mean'] for name in (*_CASE_MEANS, *extra)}
  row['f1'] = _f1(row['precision'], row['recall'])
  row['global_dsc'] = s['global_dsc']
  row['num_cases'] = len(rows)
  return row


def pooled_rows(rows: Sequence[dict], extra: Sequence[str] = ()) -> tuple[dict, dict]:
  """(means, stds) over all cases of all folds; F1 from the means, one global DSC."""
  s = metrics.summarize(rows)
  names = (*_CASE_MEANS, *extra)
  mean = {m: s[m]['mean'] for m in names}
  mean.update(f1=_f1(mean['precision'], mean['recall']), global_dsc=s['global_dsc'])
  return mean, {m: s[m]['std'] for m in names}


def aggregate(root, folds: Sequence[int]) -> dict:
  """{'folds': [fold rows], 'mean', 'std' (over folds), 'pooled': (means, stds) over cases}."""
  root = pathlib.Path(root)
  per_fold = {k: report.read_cases(runs.eval_dir(fold_dir(root, k))) for k in folds}
  all_cases = [row for k in folds for row in per_fold[k]]
  extra = [m for m in LESION_METRICS if all(m in row for row in all_cases)]
  fold_rows = [{'fold': k, **fold_row(per_fold[k], extra)} for k in folds]
  ids = [c['case_id'] for c in all_cases]
  if len(set(ids)) != len(ids):
    twice = sorted({i for i in ids if ids.count(i) > 1})
    raise DataError(root, f'cases tested in more than one fold: {twice[:5]}; are the folds from '
                    'one split?')
  columns = [*FOLD_METRICS, *extra]
  values = {m: np.array([r[m] for r in fold_rows], np.float64) for m in columns}
  return {'folds': fold_rows, 'columns': columns,
          'mean': {m: float(np.nanmean(v)) for m, v in values.items()},
          'std': {m: float(np.nanstd(v)) for m, v in values.items()},
          'pooled': pooled_rows(all_cases, extra), 'num_cases': len(all_cases)}


def _cell(metric: str, mean: float, std: float | None = None) -> str:
  scale, digits = (100.0, 2) if metric in PERCENT else (1.0, 4 if metric in ('f1', 'lesion_f1') else 2)
  text = f'{mean * scale:.{digits}f}'
  return text if std is None else f'{text} ± {std * scale:.{digits}f}'


def markdown(result: dict) -> str:
  """The MDANet-style table: one row per fold, mean ± std over folds, and all cases pooled."""
  lines = ['| | cases | ' + ' | '.join(HEADERS[m] for m in result['columns']) + ' |',
           '|---|---' + '|---' * len(result['columns']) + '|']
  for r in result['folds']:
    lines.append(f"| fold {r['fold']} | {r['num_cases']} | "
                 + ' | '.join(_cell(m, r[m]) for m in result['columns']) + ' |')
  lines.append(f"| **mean ± std over {len(result['folds'])} folds** | {result['num_cases']} | "
               + ' | '.join(_cell(m, result['mean'][m], result['std'][m])
                            for m in result['columns']) + ' |')
  mean, std = result['pooled']
  cells = [_cell(m, mean[m], std.get(m)) for m in result['columns']]
  lines.append(f"| all cases pooled (per-case mean ± std) | {result['num_cases']} | "
               + ' | '.join(cells) + ' |')
  lines += ['', 'F1 = 2PR/(P+R) of the mean precision P and recall R (per fold). Std with ddof 0. '
            'HD95/ASD exclude cases with an empty mask.']
  return '\n'.join(lines) + '\n'


def write_tables(root: pathlib.Path, result: dict) -> None:
  """crossval.md and crossval.csv, each written to a temporary name and renamed."""
  rows = [{'row': f"fold{r['fold']}", **r} for r in result['folds']]
  rows += [{'row': 'mean', 'num_cases': result['num_cases'], **result['mean']},
           {'row': 'std', **result['std']}]
  mean, std = result['pooled']
  rows += [{'row': 'pooled_mean', 'num_cases': result['num_cases'], **mean},
           {'row': 'pooled_std', **std}]
  fields = ['row', 'num_cases', *result['columns']]
  tmp = root / '.crossval.csv.tmp'
  with tmp.open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, root / 'crossval.csv')
  tmp = root / '.crossval.md.tmp'
  tmp.write_text(markdown(result))
  os.replace(tmp, root / 'crossval.md')
