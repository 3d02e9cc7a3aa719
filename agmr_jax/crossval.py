r"""Patient-level k-fold cross-validation: train and evaluate every fold, then aggregate.

  python -m agmr_jax.crossval --config=configs/mdanet.py:dataset=synthetic_isles2018 \
      --workdir_root runs/mdanet_cv [--folds 0,1,2,3,4] [--set num_train_steps=600]

Fold k is an ordinary run in `{root}/fold{k}` with the config's `fold=k` variant (test fold k,
validation fold (k+1) % K: configs/common.apply_variant), trained and evaluated on its test fold by
`train.train_and_evaluate`. The folds run one after another here; since each is a plain run, a
cluster can instead start `python -m agmr_jax.main --config=X:fold=k --workdir={root}/fold{k}` for
every k in parallel and then call this command, which skips folds already evaluated and only
aggregates. A fold whose config.json differs from the config asked for is refused (mixing runs of
two configs would silently corrupt the table). An interrupted fold resumes from its checkpoint.

Aggregation, as MDANet's Tables 1-2 ("Scores are obtained by 5-fold cross-validation"): each fold
gives its per-case means (DSC, precision, recall, HD95, ASD) and its global DSC; the table prints
mean ± std of these over folds (std with ddof 0, like metrics.summarize), DSC / precision / recall
in percent, and an F1 column computed from mean precision and recall, F1 = 2PR / (P + R), which is
how MDANet's F1 (a single number that differs from its DSC) can be reproduced from the other
columns. A second row pools all folds' test cases (every patient is tested exactly once): per-case
mean ± std and one global DSC over all of them. Writes `{root}/crossval.md` and
`{root}/crossval.csv` (derived from the folds, so regenerated on every call).
"""

import ast
import csv
import importlib.util
from absl import logging
import os
import pathlib
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from agmr_jax import cli
from agmr_jax import evaluate
from agmr_jax import metrics
from input_pipeline.errors import DataError

FOLD_METRICS = ('dsc', 'precision', 'recall', 'f1', 'global_dsc', 'hd95', 'asd')
PERCENT = ('dsc', 'precision', 'recall', 'global_dsc')
HEADERS = {'dsc': 'DSC (%)', 'precision': 'Precision (%)', 'recall': 'Recall (%)',
           'f1': 'F1 Score', 'global_dsc': 'DSC global (%)', 'hd95': 'HD95 (mm)',
           'asd': 'ASD (mm)'}


def _load_module(path: str):
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: config file not found')
  spec = importlib.util.spec_from_file_location(f'_crossval_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """'batch_size=16', 'data.image_size=(96, 96)': dotted fields set like --config.x=y does."""
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'override {item!r} is not key=value')
    *path, last = key.strip().split('.')
    node = config
    for part in path:
      node = node[part]
    if last not in node:
      raise ValueError(f'override {item!r}: the config has no field {key!r}')
    node[last] = _parse_value(value.strip())


def fold_config(spec: str, fold: int, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`get_config('{variant},fold={fold}')` of 'path.py[:variant]', with the overrides applied."""
  path, _, variant = spec.partition(':')
  if any(item.partition('=')[0] == 'fold' for item in variant.split(',')):
    raise ValueError(f'{spec}: leave fold= out, cross-validation sets it for every fold')
  config = _load_module(path).get_config(','.join(filter(None, [variant, f'fold={fold}'])))
  apply_overrides(config, overrides)
  return config


def _check_same_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
  diff = [name for name, _, _ in evaluate.config_changes(workdir, config)]
  if diff:
    raise ValueError(f'{workdir / "config.json"}: this fold was run with another config (differs '
                     f'in {", ".join(diff[:8])}); use another --workdir_root')


def evaluated(workdir: pathlib.Path) -> bool:
  return (workdir / 'eval' / 'test' / 'cases.csv').exists()


def run_crossval(spec: str, root, *, folds: Sequence[int] | None = None,
                 overrides: Sequence[str] = (), train_fn: Callable | None = None) -> dict:
  """Trains + evaluates the missing folds in order, then aggregates all requested folds.

  Args:
    spec: 'configs/X.py[:variant]'.
    root: folder holding fold{k}/.
    folds: which folds (default: all of the config's num_folds).
    overrides: dotted 'key=value' config overrides applied to every fold.
    train_fn: `fn(config, workdir)`; default `train.train_and_evaluate` (tests pass a fake).

  Returns:
    `aggregate`'s result.
  """
  if train_fn is None:
    from agmr_jax import train  # pylint: disable=g-import-not-at-top
    train_fn = train.train_and_evaluate
  root = pathlib.Path(root)
  num_folds = fold_config(spec, 0, overrides).data.num_folds
  folds = list(range(num_folds)) if folds is None else sorted(set(folds))
  if not folds or not all(0 <= k < num_folds for k in folds):
    raise ValueError(f'folds {folds} must be within 0..{num_folds - 1}')
  for k in folds:
    config, workdir = fold_config(spec, k, overrides), root / f'fold{k}'
    if not config.final_eval:
      raise ValueError('final_eval is off: the folds would never be evaluated')
    _check_same_config(workdir, config)
    if evaluated(workdir):
      logging.info('fold %d: already evaluated in %s, skipped', k, workdir)
      continue
    print(f'fold {k}/{num_folds - 1}: test fold {config.data.test_fold}, validation fold '
          f'{config.data.val_fold} -> {workdir}', flush=True)
    train_fn(config, str(workdir))
    if not evaluated(workdir):
      raise RuntimeError(f'{workdir}: fold {k} stopped before its test evaluation (interrupted '
                         'or stop_after_steps); run the same command again to resume it')
  result = aggregate(root, folds)
  write_tables(root, result)
  return result


def _f1(precision: float, recall: float) -> float:
  return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def fold_row(rows: Sequence[dict]) -> dict:
  """One fold's per-case means, its global DSC and F1 from its mean precision and recall."""
  s = metrics.summarize(rows)
  row = {name: s[name]['mean'] for name in ('dsc', 'precision', 'recall', 'hd95', 'asd')}
  row['f1'] = _f1(row['precision'], row['recall'])
  row['global_dsc'] = s['global_dsc']
  row['num_cases'] = len(rows)
  return row


def pooled_rows(rows: Sequence[dict]) -> tuple[dict, dict]:
  """(means, stds) over all cases of all folds; F1 from the means, one global DSC."""
  s = metrics.summarize(rows)
  names = ('dsc', 'precision', 'recall', 'hd95', 'asd')
  mean = {m: s[m]['mean'] for m in names}
  mean.update(f1=_f1(mean['precision'], mean['recall']), global_dsc=s['global_dsc'])
  return mean, {m: s[m]['std'] for m in names}


def aggregate(root, folds: Sequence[int]) -> dict:
  """{'folds': [fold rows], 'mean', 'std' (over folds), 'pooled': (means, stds) over cases}."""
  root = pathlib.Path(root)
  fold_rows, all_cases = [], []
  for k in folds:
    cases = evaluate.read_cases(root / f'fold{k}' / 'eval' / 'test')
    fold_rows.append({'fold': k, **fold_row(cases)})
    all_cases += cases
  ids = [c['case_id'] for c in all_cases]
  if len(set(ids)) != len(ids):
    twice = sorted({i for i in ids if ids.count(i) > 1})
    raise DataError(root, f'cases tested in more than one fold: {twice[:5]}; are the folds from '
                    'one split?')
  values = {m: np.array([r[m] for r in fold_rows], np.float64) for m in FOLD_METRICS}
  return {'folds': fold_rows,
          'mean': {m: float(np.nanmean(v)) for m, v in values.items()},
          'std': {m: float(np.nanstd(v)) for m, v in values.items()},
          'pooled': pooled_rows(all_cases), 'num_cases': len(all_cases)}


def _cell(metric: str, mean: float, std: float | None = None) -> str:
  scale, digits = (100.0, 2) if metric in PERCENT else (1.0, 4 if metric == 'f1' else 2)
  text = f'{mean * scale:.{digits}f}'
  return text if std is None else f'{text} ± {std * scale:.{digits}f}'


def markdown(result: dict) -> str:
  """The MDANet-style table: one row per fold, mean ± std over folds, and all cases pooled."""
  lines = ['| | cases | ' + ' | '.join(HEADERS[m] for m in FOLD_METRICS) + ' |',
           '|---|---' + '|---' * len(FOLD_METRICS) + '|']
  for r in result['folds']:
    lines.append(f"| fold {r['fold']} | {r['num_cases']} | "
                 + ' | '.join(_cell(m, r[m]) for m in FOLD_METRICS) + ' |')
  lines.append(f"| **mean ± std over {len(result['folds'])} folds** | {result['num_cases']} | "
               + ' | '.join(_cell(m, result['mean'][m], result['std'][m])
                            for m in FOLD_METRICS) + ' |')
  mean, std = result['pooled']
  cells = [_cell(m, mean[m], std.get(m)) for m in FOLD_METRICS]
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
  fields = ['row', 'num_cases', *FOLD_METRICS]
  tmp = root / '.crossval.csv.tmp'
  with tmp.open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, root / 'crossval.csv')
  tmp = root / '.crossval.md.tmp'
  tmp.write_text(markdown(result))
  os.replace(tmp, root / 'crossval.md')


def main(argv):
  from agmr_jax import train  # pylint: disable=g-import-not-at-top

  def command(f):
    folds = [int(k) for k in f.folds] if f.folds else None
    return run_crossval(f.config, f.workdir_root, folds=folds, overrides=f.set or ())

  # A fold stopped early or diverged is also worth one line, not a traceback.
  result = cli.run(argv, command,
                   errors=cli.USER_ERRORS + (RuntimeError, train.NonFiniteLossError))
  print(markdown(result))
  print(f'wrote {pathlib.Path(f.workdir_root) / "crossval.md"} and crossval.csv')


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  flags.DEFINE_string('config', None, 'Config file and variant: configs/X.py[:variant].',
                      required=True)
  flags.DEFINE_string('workdir_root', None, 'Folder of the fold runs.', required=True)
  flags.DEFINE_list('folds', None, 'Folds to run (default: all).')
  flags.DEFINE_multi_string('set', None, 'Config override key=value, for every fold.')
  app.run(main)
