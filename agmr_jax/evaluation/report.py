"""An evaluation's report: cases.csv, summary.json, summary.md and the DSC box plot.

A report is per-case rows plus a summary of them (metrics.summarize, as nnU-Net's summary.json);
`read_cases` reads the rows back for cross-validation and comparison tables.
"""

import csv
import json
import pathlib

import numpy as np

from agmr_jax import runs
from agmr_jax.evaluation import metrics
from input_pipeline.errors import DataError

COLUMNS = ('case_id', 'dsc', 'precision', 'recall', 'voe', 'rvd', 'hd95', 'asd', 'lesion_f1',
           'lesion_count_diff', 'volume_diff_ml', 'empty', 'n_truth', 'n_pred')


def table(rows: list[dict], columns: list[str], floatfmt: str = '.4f') -> str:
  """A plain-text (markdown) table of dict rows."""
  def cell(v):
    return format(v, floatfmt) if isinstance(v, (float, np.floating)) else str(v)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(r.get(c, '')) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines)



def read_cases(eval_dir: str | pathlib.Path) -> list[dict]:
  """The rows of an evaluation's cases.csv, numbers parsed back ('nan' -> NaN)."""
  path = pathlib.Path(eval_dir) / runs.CASES
  if not path.exists():
    raise FileNotFoundError(f'{path}: no per-case results (run agmr_jax.evaluate first)')
  with path.open(newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows or 'case_id' not in rows[0]:
    raise DataError(path, 'no case rows')
  for line, row in enumerate(rows, start=2):
    for key in row:
      try:
        if key in metrics.METRICS:
          row[key] = float(row[key])
        elif key in metrics.COUNT_FIELDS:
          row[key] = int(row[key])
      except (TypeError, ValueError) as e:
        raise DataError(path, f'line {line}, column {key!r}: {row[key]!r} is not a number') from e
  return rows


def summary_markdown(summary: dict, title: str, rows: list[dict] | None = None) -> str:
  """summary.md: the papers' mean ± std per metric, global DSC, empty counts, per-case table."""
  formatted = metrics.format_summary(summary)
  lines = [f'# {title}', '', '| metric | mean ± std |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in formatted.items()]
  lines += ['', f"{summary['num_cases']} cases; empty masks: both {summary['num_both_empty']}, "
            f"prediction only {summary['num_pred_empty']}, truth only "
            f"{summary['num_truth_empty']} (distances exclude them). Std over cases, ddof 0."]
  if rows:
    lines += ['', table(rows, list(COLUMNS))]
  return '\n'.join(lines) + '\n'


def write_report(rows: list[dict], out_dir: pathlib.Path, title: str,
                 run_info: dict | None = None) -> dict:
  """cases.csv, summary.json, summary.md and the DSC box plot; returns the summary."""
  if not rows:
    raise ValueError(f'{out_dir}: no cases to report')
  with (out_dir / runs.CASES).open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]), extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  summary = metrics.summarize(rows)
  payload = {'run': run_info or {}, **summary}
  (out_dir / runs.SUMMARY).write_text(json.dumps(payload, indent=2, default=float))
  (out_dir / 'summary.md').write_text(summary_markdown(summary, title, rows))
  boxplot({title: [r['dsc'] for r in rows]}, out_dir / 'dsc_boxplot.png')
  return summary


def boxplot(series: dict[str, list[float]], path: pathlib.Path, ylabel: str = 'per-case DSC'):
  """One box per named series of per-case values (the papers' Fig. 9 / Fig. 8)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(series), 4))
  ax.boxplot(list(series.values()))
  ax.set_xticks(range(1, len(series) + 1), list(series), rotation=20, ha='right', fontsize=7)
  ax.set_ylabel(ylabel)
  ax.set_ylim(0, 1)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
