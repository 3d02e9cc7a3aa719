r"""Expands the sweep a config declares, runs or schedules its points, and tabulates the results.

  python -m launch.sweep --config configs/unet.py:tiny --workdir_root runs/sweep_unet \
      [--run local|slurm|k8s|none] [--config.field=value ...]

A config file declares its sweep next to `get_config`:

  def get_sweep(arg=None):
    return {'optimizer.learning_rate': [3e-4, 1e-3], 'seed': [0, 1, 2]}  # a grid (product), or
    return [{'data.test_fold': k, 'data.val_fold': (k + 1) % 5} for k in range(5)]  # points

Keys are dotted config fields; a dict of lists is the full grid, a list of dicts the points as
listed (a comprehension over several ranges is a grid too). `--config.field=value` arguments
apply to every point, after the variant and before the point's own values.

Each point gets `<workdir_root>/<name>` with `<name>` built from its values
(`seed=1,data.test_fold=3`), where `sweep_point.json` records its values, its resolved config and
the exact `agmr_jax.main` arguments. A point whose workdir has `eval/test/summary.json` (or, with
final_eval off, a logged final step) is finished and skipped; one with a checkpoint resumes.
  --run local  runs the unfinished points one after another, each in its own process (so
               `config.deterministic` can set XLA flags per point); SIGTERM is passed on to the
               running point, which checkpoints, and the sweep exits with status 75.
  --run slurm  writes `sweep.sbatch`, an array job with one task per unfinished point.
  --run k8s    writes `sweep_jobs.json`, a Kubernetes v1 List of one Job per unfinished point
               (`kubectl apply -f`); needs --image and --pvc.
  --run none   only aggregates.
Every mode ends by writing `sweep.csv` and `sweep.md` under the root: one row per point with its
values, status, last step, final training loss, best validation Dice and the test metrics from
eval/test/summary.json, plus the mean over finished points.
"""

import argparse
import ast
import csv
import dataclasses
import importlib
import importlib.util
import itertools
import json
import pathlib
import re
import shlex
import signal
import subprocess
import sys

import ml_collections

from agmr_jax import runtime  # JAX-free: the launcher itself never starts JAX.
from launch import cluster_jobs

REPO = pathlib.Path(__file__).resolve().parent.parent
EXIT_PREEMPTED = runtime.EXIT_PREEMPTED
COLUMNS = ('status', 'step', 'train_loss', 'best_val_dice', 'test_dsc', 'test_dsc_std',
           'test_hd95', 'test_asd', 'test_global_dsc', 'test_cases')


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of the sweep."""
  name: str
  values: dict  # The sweep's fields for this point.
  workdir: pathlib.Path
  config: ml_collections.ConfigDict  # Resolved: variant, shared overrides, then `values`.
  args: tuple[str, ...]  # agmr_jax.main arguments that rebuild exactly `config`.


def load_config_module(path: str):
  """The module of a config file given as a path (configs/unet.py) or a module name."""
  file = pathlib.Path(path)
  if file.suffix != '.py':
    return importlib.import_module(path)
  if not file.is_absolute() and (REPO / file).exists():
    return importlib.import_module('.'.join(file.with_suffix('').parts))
  spec = importlib.util.spec_from_file_location(file.stem, file)
  if spec is None:
    raise FileNotFoundError(f'{path}: not a config file')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def expand(sweep) -> list[dict]:
  """A grid {field: [values]} or a list of {field: value} -> the list of points."""
  if isinstance(sweep, dict):
    for key, values in sweep.items():
      if not isinstance(values, list) or not values:
        raise ValueError(f'sweep grid field {key!r}: expected a non-empty list, got {values!r}')
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*sweep.values())]
  points = [dict(p) for p in sweep]
  if not points or not all(points):
    raise ValueError('a sweep must hold at least one point, each setting at least one field')
  return points


def format_value(value) -> str:
  """A value as agmr_jax.main's --config.field= flag parses it back."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(format_value(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def parse_value(text: str, current):
  """A command-line string as the type of the field it overrides."""
  if isinstance(current, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'expected true/false, got {text!r}')
    return text.lower() in ('true', '1')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def set_field(config: ml_collections.ConfigDict, key: str, value) -> None:
  """config[key] = value for a dotted key that must already exist (as on main's command line)."""
  *path, last = key.split('.')
  node = config
  for part in path:
    if part not in node:
      raise KeyError(f'sweep field {key!r}: the config has no {part!r}')
    node = node[part]
  if last not in node:
    raise KeyError(f'sweep field {key!r}: the config has no field {last!r}')
  node[last] = tuple(value) if isinstance(value, list) else value


def get_field(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split('.'):
    node = node[part] if part in node else None
    if node is None:
      return None
  return node


def point_name(values: dict, keys: dict[str, str] | None = None) -> str:
  """'test_fold=3,seed=1': each field by its last name (`keys` maps fields to display names)."""
  keys = keys or {k: k for k in values}
  text = ','.join(f'{keys[k]}={format_value(v)}' for k, v in values.items())
  return re.sub(r'[^A-Za-z0-9._=,+-]', '_', text)


def make_points(config_arg: str, workdir_root: str | pathlib.Path,
                shared: dict[str, str] | None = None) -> list[Point]:
  """Resolves every point of `config_arg`'s sweep (shared overrides as command-line strings)."""
  path, _, variant = config_arg.partition(':')
  module = load_config_module(path)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} declares no get_sweep(arg); see launch/sweep.py for the format')
  root = pathlib.Path(workdir_root).absolute()
  shared = dict(shared or {})
  points = []
  grid = expand(module.get_sweep(variant or None))
  fields = list(dict.fromkeys(k for values in grid for k in values))
  short = {k: k.rpartition('.')[2] for k in fields}
  if len(set(short.values())) < len(fields):
    short = {k: k for k in fields}  # Two fields share a last name: spell them out.
  for values in grid:
    config = module.get_config(variant or None)
    for key, text in shared.items():
      set_field(config, key, parse_value(text, get_field(config, key)))
    for key, value in values.items():
      set_field(config, key, value)
    name = point_name(values, short)
    overrides = {**shared, **{k: format_value(v) for k, v in values.items()}}
    args = (f'--config={config_arg}', *(f'--config.{k}={v}' for k, v in overrides.items()),
            f'--workdir={root / name}')
    points.append(Point(name, values, root / name, config, args))
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError(f'the sweep repeats a point: {sorted(n for n in names if names.count(n) > 1)}')
  return points


def _record(point: Point) -> dict:
  return {'name': point.name, 'values': point.values, 'args': list(point.args),
          'config': json.loads(point.config.to_json_best_effort())}


def check_point(point: Point) -> None:
  """Refuses a workdir whose sweep_point.json records another config than the point's."""
  path = point.workdir / 'sweep_point.json'
  if path.exists() and json.loads(path.read_text())['config'] != _record(point)['config']:
    raise ValueError(f'{point.workdir} holds a run of another config (the config file or the '
                     'shared --config.* overrides changed since); use another --workdir_root')


def save_point(point: Point) -> None:
  """Writes sweep_point.json: the point's values, resolved config and main arguments."""
  point.workdir.mkdir(parents=True, exist_ok=True)
  (point.workdir / 'sweep_point.json').write_text(json.dumps(_record(point), indent=2))


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def status(point: Point) -> str:
  """'finished', 'partial' (has a checkpoint) or 'new'."""
  if (point.workdir / 'eval' / 'test' / 'summary.json').exists():
    return 'finished'
  steps = [r['step'] for r in read_metrics(point.workdir) if 'train/loss' in r]
  if (not point.config.final_eval and point.config.num_train_steps > 0 and steps
      and max(steps) >= point.config.num_train_steps):
    return 'finished'
  checkpoints = point.workdir / 'checkpoints'
  if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
    return 'partial'
  return 'new'


def run_local(points: list[Point], *, python: str = sys.executable, env: dict | None = None) -> int:
  """Runs the points one after another; returns 0, 1 (some failed) or 75 (preempted)."""
  failed = []
  current = {}

  def forward(signum, frame):
    del frame
    if current.get('proc') is not None:
      current['proc'].send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    for i, point in enumerate(points, start=1):
      print(f'[{i}/{len(points)}] {point.name}: running', flush=True)
      with (point.workdir / 'sweep_run.log').open('a') as log:
        current['proc'] = subprocess.Popen([python, '-m', 'agmr_jax.main', *point.args],
                                           cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        code = current['proc'].wait()
      current['proc'] = None
      if code == EXIT_PREEMPTED:
        print(f'{point.name}: preempted (checkpoint saved); rerun the sweep to resume', flush=True)
        return EXIT_PREEMPTED
      if code != 0:
        failed.append(point.name)
        print(f'{point.name}: failed with status {code}; see {point.workdir}/sweep_run.log',
              flush=True)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return 1 if failed else 0


def result_row(point: Point) -> dict:
  """The point's values, status and final metrics (empty cells where a run has none yet)."""
  row = {'point': point.name, **{k: format_value(v) for k, v in point.values.items()},
         'status': status(point)}
  metrics = read_metrics(point.workdir)
  train = [r for r in metrics if 'train/loss' in r]
  if train:
    row['step'] = train[-1]['step']
    row['train_loss'] = train[-1]['train/loss']
  val = [r['val/dice'] for r in metrics if 'val/dice' in r]
  if val:
    row['best_val_dice'] = max(val)
  summary_path = point.workdir / 'eval' / 'test' / 'summary.json'
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
  fields = list(dict.fromkeys(k for p in points for k in p.values))
  columns = ['point', *fields, *COLUMNS]
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


def _parse_args(argv):
  parser = argparse.ArgumentParser(prog='python -m launch.sweep',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', required=True, help='config file[:variant] with get_sweep()')
  parser.add_argument('--workdir_root', required=True, help='one workdir per point goes here')
  parser.add_argument('--run', choices=('local', 'slurm', 'k8s', 'none'), default='local')
  parser.add_argument('--python', default=sys.executable, help='interpreter that runs a point')
  parser.add_argument('--image', help='k8s: container image holding this repository')
  parser.add_argument('--pvc', help='k8s: PersistentVolumeClaim mounted at the workdir root')
  parser.add_argument('--repo_in_image', help='k8s: the repository inside the image (default: '
                      'the same path as here)')
  parser.add_argument('--gpus', type=int, default=1, help='k8s/slurm: GPUs per point')
  args, rest = parser.parse_known_args(argv)
  shared = {}
  for item in rest:
    key, sep, value = item.partition('=')
    if not key.startswith('--config.') or not sep:
      parser.error(f'unrecognised argument {item!r} (only --config.field=value pass through)')
    shared[key[len('--config.'):]] = value
  if args.run == 'k8s' and not (args.image and args.pvc):
    parser.error('--run k8s needs --image and --pvc')
  return args, shared


def main(argv: list[str] | None = None) -> int:
  args, shared = _parse_args(sys.argv[1:] if argv is None else argv)
  root = pathlib.Path(args.workdir_root).absolute()
  points = make_points(args.config, root, shared)
  for point in points:
    check_point(point)
  todo = [p for p in points if status(p) != 'finished']
  print(f'{len(points)} points, {len(points) - len(todo)} finished, {len(todo)} to run')
  for point in todo:
    save_point(point)
  code = 0
  if args.run == 'local':
    code = run_local(todo, python=args.python)
  elif args.run == 'slurm' and todo:
    path = cluster_jobs.write_slurm_array(todo, root, python=args.python, gpus=args.gpus)
    print(f'wrote {path}; submit it with: sbatch {shlex.quote(str(path))}')
  elif args.run == 'k8s' and todo:
    path = cluster_jobs.write_k8s_jobs(todo, root, image=args.image, pvc=args.pvc, gpus=args.gpus,
                                       repo_dir=args.repo_in_image)
    print(f'wrote {path}; submit it with: kubectl apply -f {shlex.quote(str(path))}')
  rows = aggregate(points, root)
  print(markdown_table(rows, ['point', *COLUMNS]))
  print(f'wrote {root / "sweep.csv"} and {root / "sweep.md"}')
  return code


if __name__ == '__main__':
  sys.exit(main())
