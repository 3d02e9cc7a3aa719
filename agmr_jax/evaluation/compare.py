r"""The papers' model comparison table with paired significance tests.

  agmr-compare --runs runs/agmr,runs/dunet,runs/unet --reference runs/agmr \
      [--split test] [--names AGMR-Net,D-UNet,U-Net] [--out results/table4]

A run is a training workdir evaluated by agmr-evaluate (its `eval/{split}/cases.csv`), a
cross-validation root whose `fold*/eval/{split}/cases.csv` are pooled (every patient tested once),
or any folder holding a cases.csv (agmr-evaluate-folder's output, e.g. another tool's masks).
`--split` is the name of the folder under eval/ ('test', 'test-tta', ...). All runs must hold the
same case ids; otherwise the command stops and names the run and the differing cases.

Columns, as AGMR-Net's Tables 3-4: DSC, DSC (global), recall, precision, ASD and HD95 (mm), then
the challenge metrics (lesion F1, lesion count and volume differences) where every run has them;
`metrics` chooses others (any per-case metric of metrics.METRICS). Each is the per-case
mean ± std (global DSC pools voxels over cases), and for every per-case metric the
two-sided p-value of the paired Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences
dropped: 'wilcox') of the run against the reference over the matched cases; AGMR-Net's Table 4
reports this p-value on DSC. Distances are paired over the cases where both runs have them (no
empty mask). Identical values in every pair give p = 1 (no evidence of a difference). Table 4's
differences "Ours - X" appear as ΔASD and ΔHD95 = reference mean - run mean.

Prints the markdown table; with --out PREFIX also writes PREFIX.md, PREFIX.csv and
PREFIX_dsc_boxplot.png (refusing to replace them without --overwrite).
"""

import csv
import math
import pathlib
from collections.abc import Sequence

import numpy as np
from scipy import stats

from agmr_jax import runs
from agmr_jax.evaluation import metrics
from agmr_jax.evaluation import report
from input_pipeline.errors import DataError

TITLES = {'dsc': 'DSC', 'global_dsc': 'DSC (global)', 'recall': 'Recall',
          'precision': 'Precision', 'f1': 'F1', 'voe': 'VOE', 'rvd': 'RVD', 'asd': 'ASD (mm)',
          'hd95': 'HD95 (mm)', 'asd_pred_to_truth': 'ASD P->G (mm)', 'lesion_f1': 'Lesion F1',
          'lesion_count_diff': 'Lesion count diff', 'volume_diff_ml': 'Volume diff (ml)',
          'volume_diff_voxels': 'Volume diff (voxels)'}
# The per-case metrics tabulated by default (those every run has), each with its p-value.
PAIRED = ('dsc', 'recall', 'precision', 'asd', 'hd95', 'lesion_f1', 'lesion_count_diff',
          'volume_diff_ml')


def load_run_cases(run, split: str = 'test') -> dict[str, dict]:
  """{case_id: row} of a run's evaluation, or of all folds of a cross-validation root."""
  run = pathlib.Path(run)
  direct = runs.eval_dir(run, split)
  if (run / runs.CASES).exists():  # An evaluated folder of masks.
    direct = run
  if (direct / runs.CASES).exists():
    rows = report.read_cases(direct)
  else:
    fold_dirs = sorted(p.parent for p in run.glob(f'fold*/{runs.EVAL}/{split}/{runs.CASES}'))
    if not fold_dirs:
      raise FileNotFoundError(f'{direct / runs.CASES}: {run} has no evaluation named {split!r} '
                              f'(agmr-evaluate --workdir {run})')
    rows = [r for d in fold_dirs for r in report.read_cases(d)]
  by_id = {}
  for row in rows:
    if row['case_id'] in by_id:
      raise DataError(run, f'case {row["case_id"]} appears twice in its evaluation(s)')
    by_id[row['case_id']] = row
  return by_id


def check_same_cases(tables: dict[str, dict[str, dict]], reference: str) -> list[str]:
  """The reference's case ids (sorted); ValueError naming any run whose ids differ."""
  ids = set(tables[reference])
  problems = []
  for name, table in tables.items():
    missing, extra = sorted(ids - set(table)), sorted(set(table) - ids)
    if missing or extra:
      problems.append(f'{name}: lacks {missing[:5]}{" ..." if len(missing) > 5 else ""}, '
                      f'has extra {extra[:5]}{" ..." if len(extra) > 5 else ""}')
  if problems:
    raise ValueError(f'runs differ in their case sets (compared with {reference}): '
                     + '; '.join(problems))
  return sorted(ids)


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, int]:
  """(two-sided paired Wilcoxon signed-rank p, pairs used) over pairs where both are finite."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  keep = np.isfinite(a) & np.isfinite(b)
  a, b = a[keep], b[keep]
  if a.size == 0:
    return float('nan'), 0
  if np.all(a == b):
    return 1.0, int(a.size)
  return float(stats.wilcoxon(a, b).pvalue), int(a.size)


def paired_metrics(tables: dict[str, dict[str, dict]],
                   wanted: Sequence[str] | None = None) -> list[str]:
  """The per-case metrics to tabulate: `wanted` (each must be in every row), or the PAIRED ones
  every run's rows have."""
  rows = [row for table in tables.values() for row in table.values()]
  if wanted:
    for m in wanted:
      if m not in metrics.METRICS:
        raise ValueError(f'unknown metric {m!r}; per-case metrics: {", ".join(metrics.METRICS)}')
      if not all(m in r for r in rows):
        raise ValueError(f'metric {m!r} is missing from some run\'s cases.csv (evaluated before '
                         'it existed? evaluate it again with --overwrite)')
    return list(wanted)
  return [m for m in PAIRED if all(m in r for r in rows)]


def compare(tables: dict[str, dict[str, dict]], reference: str,
            metric_names: Sequence[str] | None = None) -> list[dict]:
  """One result per run (reference first): means, stds, p-values vs the reference, deltas."""
  ids = check_same_cases(tables, reference)
  ref = tables[reference]
  chosen = paired_metrics(tables, metric_names)
  results = []
  for name in [reference] + [n for n in tables if n != reference]:
    rows = [tables[name][i] for i in ids]
    summary = metrics.summarize(rows)
    result = {'run': name, 'reference': name == reference, 'num_cases': len(ids),
              'global_dsc': summary['global_dsc'], 'metrics': chosen}
    for m in chosen:
      result[f'{m}_mean'] = summary[m]['mean']
      result[f'{m}_std'] = summary[m]['std']
      if name != reference:
        p, n = wilcoxon_p([ref[i][m] for i in ids], [r[m] for r in rows])
        result[f'{m}_p'], result[f'{m}_pairs'] = p, n
    results.append(result)
  for r in results:
    for m in ('asd', 'hd95'):
      if m in chosen:
        r[f'delta_{m}'] = results[0][f'{m}_mean'] - r[f'{m}_mean']
  return results


def _p(value: float | None) -> str:
  if value is None or math.isnan(value):
    return '—'
  return f'{value:.2e}' if value < 1e-3 else f'{value:.3f}'


def markdown(results: list[dict], split: str) -> str:
  chosen = results[0]['metrics']
  columns = [m for m in chosen if m != 'dsc']
  columns = (['dsc'] if 'dsc' in chosen else []) + ['global_dsc'] + columns
  deltas = [m for m in ('asd', 'hd95') if m in chosen]
  head = ['Method']
  for key in columns:
    head += [TITLES[key]] + (['p'] if key != 'global_dsc' else [])
  head += [f'Δ{TITLES[m].split()[0]} (ref − run)' for m in deltas]
  lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
  for r in results:
    cells = [r['run'] + (' (reference)' if r['reference'] else '')]
    for key in columns:
      if key == 'global_dsc':
        cells.append(f'{r[key]:.3f}')
        continue
      cells.append(metrics.format_mean_std(r[f'{key}_mean'], r[f'{key}_std']))
      cells.append(_p(r.get(f'{key}_p')))
    cells += [f"{r[f'delta_{m}']:.3f}" for m in deltas]
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', f"{results[0]['num_cases']} matched cases ({split}); p: two-sided paired "
            'Wilcoxon signed-rank test against the reference; std over cases, ddof 0.']
  return '\n'.join(lines) + '\n'


def _write_outputs(prefix: pathlib.Path, results, tables, split, overwrite: bool) -> None:
  paths = [prefix.with_name(prefix.name + s) for s in ('.md', '.csv', '_dsc_boxplot.png')]
  for path in paths:
    if path.exists() and not overwrite:
      raise FileExistsError(f'{path}: exists; pass --overwrite to replace it')
  prefix.parent.mkdir(parents=True, exist_ok=True)
  tmp = [p.with_name('.' + p.name + '.tmp' + p.suffix) for p in paths]
  try:
    tmp[0].write_text(markdown(results, split))
    fields = [k for k in dict.fromkeys(k for r in results for k in r) if k != 'metrics']
    with tmp[1].open('w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
      writer.writeheader()
      writer.writerows(results)
    report.boxplot({n: [r['dsc'] for r in t.values()] for n, t in tables.items()}, tmp[2])
    for t, p in zip(tmp, paths):
      t.replace(p)
  finally:
    for t in tmp:
      t.unlink(missing_ok=True)


def run(run_dirs: Sequence[str], reference: str, *, split: str = 'test',
        names: Sequence[str] | None = None, out: str | None = None,
        overwrite: bool = False, metric_names: Sequence[str] | None = None) -> list[dict]:
  """Loads, compares, prints and (with `out`) writes the table; returns the results.

  `names` label the runs in the order given (the reference is prepended when not among them).
  """
  run_dirs = list(dict.fromkeys(run_dirs if reference in run_dirs else [reference, *run_dirs]))
  if names:
    if len(names) != len(run_dirs):
      raise ValueError(f'{len(names)} names for {len(run_dirs)} runs')
    labels = dict(zip(run_dirs, names))
  else:
    short = [pathlib.Path(r).name for r in run_dirs]
    labels = dict(zip(run_dirs, short if len(set(short)) == len(short) else run_dirs))
  tables = {labels[r]: load_run_cases(r, split) for r in run_dirs}
  results = compare(tables, labels[reference], metric_names)
  print(markdown(results, split))
  if out:
    _write_outputs(pathlib.Path(out), results, tables, split, overwrite)
    print(f'wrote {out}.md, {out}.csv and {out}_dsc_boxplot.png')
  return results
