"""A study's report: one row per network, paired tests against the reference, figures.

`write` turns the finished runs of a study (agmr_jax/study.py) into, under the study root:
  study.md / study.csv   per network: parameters, GFLOPs per slice, training time and steps/s,
                         mean and std over cases of DSC, HD95, ASD, lesion F1, lesion count and
                         volume differences, global DSC, and the paired Wilcoxon p-value against
                         the reference on per-case DSC and lesion F1, raw and Holm-adjusted
  study_dsc_boxplot.png  per-case DSC of every network side by side
  study_montage.png      the same test cases, one axial slice each, truth and predictions outlined

With several seeds a case's value is its mean over the seeds (the tests pair these), and the
`dsc_seed_std` column gives the spread of the mean DSC across seeds.
"""

import csv
import json
import math
import pathlib

import numpy as np

from agmr_jax import runs
from agmr_jax.evaluation import compare
from agmr_jax.evaluation import metrics
from agmr_jax.evaluation import report
from agmr_jax.evaluation import study_figures

CASE_METRICS = ('dsc', 'hd95', 'asd', 'lesion_f1', 'lesion_count_diff', 'volume_diff_ml')
TESTED = ('dsc', 'lesion_f1')  # Paired against the reference, Holm-adjusted.
BOXPLOT, MONTAGE = 'study_dsc_boxplot.png', 'study_montage.png'  # beside study.md
COST = 'study_cost.json'  # Cached in each run's workdir: parameters and forward FLOPs.


def holm(pvalues) -> list[float]:
  """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted in the family)."""
  p = np.asarray(pvalues, np.float64)
  valid = np.flatnonzero(~np.isnan(p))
  out = np.full(p.shape, np.nan)
  running = 0.0
  for rank, i in enumerate(valid[np.argsort(p[valid], kind='stable')]):
    running = max(running, min(1.0, (valid.size - rank) * p[i]))
    out[i] = running
  return out.tolist()


def training_time(workdir) -> dict:
  """Steps, seconds and steps/s of training, from the rates logged in metrics.jsonl.

  Each logged interval lasted (its steps) / (its steps/s); the time is their sum (the first
  interval includes compilation). `steps_per_s` is the median rate after the first interval.
  """
  logged = {r['step']: r['train/steps_per_s'] for r in runs.read_metrics(workdir)
            if 'train/steps_per_s' in r}
  if not logged:
    return {}
  steps = sorted(logged)
  previous = [0, *steps[:-1]]
  seconds = sum((s - p) / max(logged[s], 1e-12) for s, p in zip(steps, previous))
  rates = [logged[s] for s in steps[1:]] or [logged[steps[0]]]
  return {'steps': steps[-1], 'train_s': seconds, 'steps_per_s': float(np.median(rates))}


def cost(workdir) -> dict:
  """Parameters and XLA's forward FLOPs for one slice of the run's network (cached)."""
  path = pathlib.Path(workdir) / COST
  if path.exists():
    return json.loads(path.read_text())
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from agmr_jax.inference import loading  # pylint: disable=g-import-not-at-top
  config = runs.load_config(workdir)
  recipe = runs.read_recipe(workdir) or runs.recipe_from_config(config)
  model = loading.build_model(config, recipe)
  x = jax.ShapeDtypeStruct((1, *recipe.slice_shape), jnp.float32)
  variables = jax.eval_shape(lambda k, v: model.init(k, v, train=False), jax.random.key(0), x)
  params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables.get('params', {})))
  lowered = jax.jit(lambda v, v_x: model.apply(v, v_x, train=False)).lower(variables, x)
  analysis = lowered.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per module.
    analysis = analysis[0] if analysis else None
  flops = float(analysis['flops']) if analysis and 'flops' in analysis else float('nan')
  result = {'params': params, 'gflops_per_slice': flops / 1e9,
            'input_shape': list(recipe.slice_shape)}
  path.write_text(json.dumps(result))
  return result


def _seed_tables(finished, split) -> dict[str, list[dict]]:
  """{entry: [ {case_id: row} per finished seed ]}."""
  tables: dict[str, list[dict]] = {}
  for name, _, point in finished:
    tables.setdefault(name, []).append(compare.load_run_cases(point.workdir, split))
  return tables


def _case_means(seed_tables: list[dict]) -> dict[str, dict]:
  """{case_id: {metric: mean over seeds}} over the cases every seed holds."""
  ids = sorted(set.intersection(*(set(t) for t in seed_tables)))
  out = {}
  for i in ids:
    row = {'case_id': i, 'n_truth': seed_tables[0][i].get('n_truth', 0)}
    for m in CASE_METRICS:
      values = [t[i][m] for t in seed_tables if m in t[i]]
      row[m] = float(np.mean(values)) if values else float('nan')
    out[i] = row
  return out


def _summary_cells(seed_tables: list[dict], cases: dict[str, dict]) -> dict:
  row = {'seeds': len(seed_tables), 'cases': len(cases)}
  for m in CASE_METRICS:
    values = np.asarray([c[m] for c in cases.values()], np.float64)
    finite = values[np.isfinite(values)]
    row[f'{m}_mean'] = float(finite.mean()) if finite.size else float('nan')
    row[f'{m}_std'] = float(finite.std()) if finite.size else float('nan')
  per_seed = [metrics.summarize(list(t.values())) for t in seed_tables]
  row['global_dsc'] = float(np.mean([s.get('global_dsc', float('nan')) for s in per_seed]))
  row['dsc_seed_std'] = (float(np.std([s['dsc']['mean'] for s in per_seed]))
                         if len(per_seed) > 1 else float('nan'))
  return row


def _run_cells(points: list) -> dict:
  """Cost and mean training time over an entry's runs."""
  times = [training_time(p.workdir) for p in points]
  times = [t for t in times if t]
  row = dict(cost(points[0].workdir))
  row['input_shape'] = 'x'.join(str(s) for s in row['input_shape'])
  for key in ('steps', 'train_s', 'steps_per_s'):
    row[key] = float(np.mean([t[key] for t in times])) if times else float('nan')
  return row


def rows(study, finished, names: list[str]) -> tuple[list[dict], dict[str, dict]]:
  """(one row per network with finished runs, {network: {case_id: seed-mean row}})."""
  tables = _seed_tables(finished, study.split)
  cases = {n: _case_means(tables[n]) for n in names if n in tables}
  out = []
  for name in cases:
    points = [p for n, _, p in finished if n == name]
    out.append({'network': name, 'config': study.entries[name],
                'reference': name == study.reference, **_run_cells(points),
                **_summary_cells(tables[name], cases[name])})
  if study.reference in cases:
    _paired_tests(out, cases, study.reference)
  return out, cases


def _paired_tests(out: list[dict], cases: dict[str, dict], reference: str) -> None:
  """Adds {m}_p and {m}_p_holm (family: every network against the reference on m)."""
  ref = cases[reference]
  others = [r for r in out if r['network'] != reference]
  for m in TESTED:
    raw = []
    for r in others:
      ids = compare.check_same_cases({reference: ref, r['network']: cases[r['network']]},
                                     reference)
      p, _ = compare.wilcoxon_p([ref[i][m] for i in ids], [cases[r['network']][i][m] for i in ids])
      raw.append(p)
    for r, p, adjusted in zip(others, raw, holm(raw)):
      r[f'{m}_p'], r[f'{m}_p_holm'] = p, adjusted


def _num(v, fmt='.3f') -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return '—'
  return format(v, fmt)


def _p(v) -> str:
  return _num(v, '.2e' if v is not None and not math.isnan(v) and v < 1e-3 else '.3f')


def markdown(study, table: list[dict], machine: dict | None, missing: list[str]) -> str:
  """study.md: the table, then what each column means, the machine and the command."""
  head = ['Network', 'Params (M)', 'GFLOPs/slice', 'Train time (s)', 'Steps/s', 'DSC',
          'DSC (global)', 'HD95 (mm)', 'ASD (mm)', 'Lesion F1', 'Lesion count diff',
          'Volume diff (ml)', 'p DSC (Holm)', 'p lesion F1 (Holm)']
  lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
  for r in table:
    def ms(m, row=r):
      return metrics.format_mean_std(row[f'{m}_mean'], row[f'{m}_std'])
    cells = [r['network'] + (' (reference)' if r['reference'] else ''),
             _num(r['params'] / 1e6, '.2f'), _num(r['gflops_per_slice'], '.3f'),
             _num(r['train_s'], '.0f'), _num(r['steps_per_s'], '.2f'), ms('dsc'),
             _num(r['global_dsc']), ms('hd95'), ms('asd'), ms('lesion_f1'),
             ms('lesion_count_diff'), ms('volume_diff_ml')]
    cells += [f"{_p(r.get(f'{m}_p'))} ({_p(r.get(f'{m}_p_holm'))})" for m in TESTED]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join([f'# Study {pathlib.Path(study.path).stem}', '', *lines, '',
                    *_notes(study, table, machine, missing)]) + '\n'


def _notes(study, table, machine, missing) -> list[str]:
  seeds = ', '.join(map(str, study.seeds))
  cases = table[0]['cases'] if table else 0
  notes = [
      f'{cases} {study.split} cases; mean ± std over cases (ddof 0), per-case values averaged '
      f'over seeds ({seeds}). DSC (global) pools voxels over cases. p: two-sided paired Wilcoxon '
      f'signed-rank test against the reference ({study.reference}) over the cases; in brackets '
      'the Holm-adjusted p-value (family: every network against the reference on that metric).',
      'GFLOPs/slice: XLA cost analysis of the forward pass for one slice at the run\'s input '
      'size; parameters exclude BatchNorm statistics. Train time: sum of the logged intervals '
      '(steps / steps/s; the first includes compilation); steps/s: median after the first.']
  if machine:
    gpus = '; '.join(machine.get('gpus') or []) or 'none'
    notes.append(f"Machine: {machine.get('platform')}, CPU {machine.get('cpu')} "
                 f"({machine.get('cpu_count')} cores), GPUs: {gpus}, JAX_PLATFORMS="
                 f"{machine.get('jax_platforms') or '(default)'}; commit "
                 f"{machine.get('commit') or 'unknown'}.")
    notes.append(f"Command: `{machine.get('command', '')}`")
  else:
    notes.append('Machine: not recorded (no run trained through `--run local` here).')
  notes.append('Protocol: ' + ', '.join(f'{k}={v}' for k, v in study.protocol.items()) + '.')
  notes.append('Entries: ' + ', '.join(f'{n} = `{s}`' for n, s in study.entries.items()) + '.')
  if missing:
    notes.append(f"Not finished yet (no row): {', '.join(missing)}.")
  if table:  # written beside study.md by write(): the folder is a self-contained report
    notes += [f'![Per-case DSC]({BOXPLOT})', f'![{study.split.capitalize()} cases, truth (green) '
              f"and each network's prediction (red)]({MONTAGE})"]
  return ['', *[n + '\n' for n in notes]]


def write(study, finished, root: pathlib.Path, names: list[str]) -> list[pathlib.Path]:
  """Writes study.md, study.csv and the figures under `root`; returns their paths."""
  table, cases = rows(study, finished, names)
  machine_path = root / 'machine.json'
  machine = json.loads(machine_path.read_text()) if machine_path.exists() else None
  missing = [n for n in names if n not in cases]
  paths = [root / 'study.md', root / 'study.csv']
  paths[0].write_text(markdown(study, table, machine, missing))
  fields = list(dict.fromkeys(k for r in table for k in r)) or ['network']
  with paths[1].open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(table)
  if table:
    paths.append(root / BOXPLOT)
    report.boxplot({n: [c['dsc'] for c in cases[n].values()] for n in cases}, paths[-1])
    workdirs = {n: [p.workdir for m, _, p in finished if m == n][0] for n in cases}
    paths.append(root / MONTAGE)
    study_figures.montage(workdirs, cases.get(study.reference) or next(iter(cases.values())),
                          study.split, study.montage_cases, paths[-1])
  return paths
