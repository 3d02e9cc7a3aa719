"""Many runs of one config: points, their workdirs, whether each is done, and the results table.

A config file declares its sweep next to `get_config` (big_vision's get_hyper):

  def get_sweep(arg=None):
    return {'optimizer.learning_rate': [3e-4, 1e-3], 'seed': [0, 1, 2]}  # a grid (product), or
    return [{'fold': k} for k in range(5)]                               # points as listed

A key that is a config field (dotted) is set on the config; any other key is a variant key of
`get_config` (`fold=k`, AGMR-Net's `row=t5_cpa`, ...), added to the variant string. Each point is
an ordinary run in `<root>/<name>`, `<name>` built from its values (`fold=3,seed=1`), with
`sweep_point.json` recording its values, resolved config and the `agmr_jax.main` arguments that
rebuild it. Cross-validation is the sweep over `fold` (agmr_jax/evaluation/crossval.py); each
paper's ablation table is its config's sweep over `row`. Whether a point is finished is
`runs.status`. JAX-free: the launcher never starts JAX.
"""

import csv
import dataclasses
import itertools
import json
import pathlib
import re
from collections.abc import Sequence

import ml_collections

from agmr_jax import config_spec
from agmr_jax import runs

COLUMNS = ('status', 'step', 'train_loss', 'best_val_dice', 'test_dsc', 'test_dsc_std',
           'test_hd95', 'test_asd', 'test_global_dsc', 'test_cases')


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of the sweep."""
  name: str
  values: dict  # The sweep's keys for this point (config fields and variant keys).
  workdir: pathlib.Path
  config: ml_collections.ConfigDict  # Resolved: variant, shared overrides, then `values`.
  args: tuple[str, ...]  # agmr_jax.main arguments that rebuild exactly `config`.


def expand(sweep) -> list[dict]:
  """A grid {key: [values]} or a list of {key: value} -> the list of points."""
  if isinstance(sweep, dict):
    for key, values in sweep.items():
      if not isinstance(values, list) or not values:
        raise ValueError(f'sweep grid field {key!r}: expected a non-empty list, got {values!r}')
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*sweep.values())]
  if not isinstance(sweep, (list, tuple)):
    raise TypeError(f'expected a dict or a list, got {type(sweep).__name__}')
  points = [dict(p) for p in sweep]
  if not points or not all(points):
    raise ValueError('a sweep must hold at least one point, each setting at least one field')
  return points


def declared(spec: str) -> list[dict]:
  """The points of the sweep the spec's config file declares (`get_sweep(variant)`)."""
  path, variant = config_spec.split_spec(spec)
  module = config_spec.load_module(path)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} declares no get_sweep(arg); see agmr_jax/sweeps.py for the format')
  sweep = module.get_sweep(variant or None)
  try:
    return expand(sweep)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{path}: get_sweep({variant or None!r}) must return a grid {{key: [values]}} '
                     f'or a list of {{key: value}} points, got {sweep!r} ({e})') from e


def point_name(values: dict, keys: dict[str, str] | None = None) -> str:
  """'test_fold=3,seed=1': each key by its last name (`keys` maps keys to display names)."""
  keys = keys or {k: k for k in values}
  text = ','.join(f'{keys[k]}={config_spec.format_value(v)}' for k, v in values.items())
  return re.sub(r'[^A-Za-z0-9._=,+-]', '_', text)


def _display_names(grid: list[dict]) -> dict[str, str]:
  keys = list(dict.fromkeys(k for values in grid for k in values))
  short = {k: k.rpartition('.')[2] for k in keys}
  return short if len(set(short.values())) == len(keys) else {k: k for k in keys}


def make_point(spec: str, root: pathlib.Path, values: dict, shared: dict[str, str],
               name: str) -> Point:
  """The point of `values`: variant keys join the spec's variant, fields are set after `shared`."""
  path, variant = config_spec.split_spec(spec)
  module = config_spec.load_module(path)
  probe = module.get_config(variant or None)
  fields = {k: v for k, v in values.items() if config_spec.has_field(probe, k)}
  variant_items = [f'{k}={config_spec.format_value(v)}' for k, v in values.items()
                   if k not in fields]
  variant = ','.join(filter(None, [variant, *variant_items]))
  config = module.get_config(variant or None)
  for key, text in shared.items():
    config_spec.apply_overrides(config, [f'{key}={text}'])
  for key, value in fields.items():
    config_spec.set_field(config, key, value)
  overrides = {**shared, **{k: config_spec.format_value(v) for k, v in fields.items()}}
  workdir = root / name
  args = (f'--config={path}' + (f':{variant}' if variant else ''),
          *(f'--config.{k}={v}' for k, v in overrides.items()), f'--workdir={workdir}')
  return Point(name, dict(values), workdir, config, args)


def make_points(spec: str, workdir_root, shared: dict[str, str] | None = None,
                grid: Sequence[dict] | None = None, names: Sequence[str] | None = None
                ) -> list[Point]:
  """Every point of `grid` (default: the config's declared sweep) under `workdir_root`.

  `shared` overrides ({dotted field: command-line string}) apply to every point, after the
  variant and before the point's own values; `names` replace the generated folder names.
  """
  root = pathlib.Path(workdir_root).absolute()
  grid = declared(spec) if grid is None else expand(grid)
  display = _display_names(grid)
  names = list(names) if names is not None else [point_name(v, display) for v in grid]
  points = [make_point(spec, root, values, dict(shared or {}), name)
            for values, name in zip(grid, names)]
  if len(set(names)) != len(names):
    raise ValueError(f'the sweep repeats a point: {sorted(n for n in names if names.count(n) > 1)}')
  return points


def _record(point: Point) -> dict:
  return {'name': point.name, 'values': point.values, 'args': list(point.args),
          'config': json.loads(point.config.to_json_best_effort())}


def check_point(point: Point) -> None:
  """Refuses a workdir made by another config than the point's (sweep_point.json, config.json)."""
  runs.check_same_config(point.workdir, point.config)
  path = point.workdir / 'sweep_point.json'
  if path.exists() and json.loads(path.read_text())['config'] != _record(point)['config']:
    raise ValueError(f'{point.workdir} holds a run of another config (the config file or the '
                     'shared overrides changed since); use another --workdir_root')


def save_point(point: Point) -> None:
  """Writes sweep_point.json: the point's values, resolved config and main arguments."""
  point.workdir.mkdir(parents=True, exist_ok=True)
  (point.workdir / 'sweep_point.json').write_text(json.dumps(_record(point), indent=2))


def status(point: Point) -> str:
  return runs.status(point.workdir, point.config)


def result_row(point: Point) -> dict:
  """The point's values, status and final metrics (empty cells where a run has none yet)."""
  row = {'point': point.name,
         **{k: config_spec.format_value(v) for k, v in point.values.items()},
         'status': status(point)}
  logged = runs.read_metrics(point.workdir)
  train = [r for r in logged if 'train/loss' in r]
  if train:
    row['step'] = train[-1]['step']
    row['train_loss'] = train[-1]['train/loss']
  val = [r['val/dice'] for r in logged if 'val/dice' in r]
  if val:
    row['best_val_dice'] = max(val)
  summary_path = runs.eval_dir(point.workdir) / runs.SUMMARY
  if summary_path.exists():
    summary = json.loads(summary_path.read_text())
    row.update(test_dsc=summary['dsc']['mean'], test_dsc_std=summary['dsc']['std'],
               test_hd95=summary.get('hd95', {}).get('mean'),
               test_asd=summary.get('asd', {}).get('mean'),
               test_global_dsc=summary.get('global_dsc'), test_cases=summary.get('num_cases'))
  return row


def aggregate(points: list[Point], root: pathlib.Path) -> list[dict]:
  """Writes sweep.csv and sweep.md under `root`; returns the rows (the last one is the mean)."""
  rows = [result_row(p) for p in points]
  keys = list(dict.fromkeys(k for p in points for k in p.values))
  columns = ['point', *keys, *COLUMNS]
  done = [r for r in rows if r['status'] == 'finished']
  mean = {'point': f'mean of {len(done)} finished', 'status': ''}
  for c in COLUMNS[2:]:
    values = [r[c] for r in done if isinstance(r.get(c), (int, float))]
    if values:
      mean[c] = sum(values) / len(values)
  rows.append(mean)
  root.mkdir(parents=True, exist_ok=True)
  with (root / 'sweep.csv').open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  (root / 'sweep.md').write_text(markdown_table(rows, columns) + '\n')
  return rows


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  def cell(v):
    return '' if v is None else format(v, '.4f') if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(r.get(c)) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines)
