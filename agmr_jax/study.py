r"""Runs a comparison study (several networks, one protocol) and writes its report.

  agmr-study --study configs/studies/synthetic_atlas.py --workdir_root runs/study_synthetic_atlas \
      [--run local|slurm|k8s|none] [--config.field=value ...]
  python -m agmr_jax.study ...   (the same command)

A study file declares `get_study(arg)` returning

  {'entries': {'agmr_net': 'configs/agmr_net.py:demo', ...},  # or a list of config:variant
   'reference': 'agmr_net',        # the network every other one is tested against
   'protocol': {'data.dataset': 'synthetic_atlas', 'num_train_steps': 2000, ...},
   'seeds': [0],                   # replicates: one run per entry and seed
   'split': 'test', 'montage_cases': 3}

Each (entry, seed) is a sweep point (agmr_jax/sweeps.py): a run in `<root>/<entry>` (or
`<entry>,seed=<s>` with several seeds) of the entry's config, the protocol's fields set after its
variant, then the command line's `--config.field=value` (e.g. data.data_dir). A finished run is
skipped, one with a checkpoint resumes; `--run` runs or schedules the rest as `agmr-sweep` does
(launch/sweep.py). Every mode ends by writing the report of the finished runs
(agmr_jax/evaluation/study.py): study.md, study.csv, study_dsc_boxplot.png, study_montage.png.
`--run local` records the machine it trains on in `<root>/machine.json`.
"""

import dataclasses
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys

from absl import flags

from agmr_jax import cli
from agmr_jax import config_spec
from agmr_jax import sweeps
from launch import cluster_jobs
from launch import sweep as sweep_launcher

FLAGS = cli.new_flags()
flags.DEFINE_string('study', None, 'Study file[:arg] with get_study() (configs/studies/).',
                    flag_values=FLAGS, required=True)
flags.DEFINE_string('workdir_root', None, 'One workdir per network (and seed) goes here; the '
                    'report too.', flag_values=FLAGS, required=True)
flags.DEFINE_enum('run', 'local', ['local', 'slurm', 'k8s', 'none'], 'How to run the unfinished '
                  'entries (none: only the report).', flag_values=FLAGS)
flags.DEFINE_string('python', sys.executable, 'Interpreter that runs an entry.', flag_values=FLAGS)
flags.DEFINE_string('image', None, 'k8s: container image holding this repository.',
                    flag_values=FLAGS)
flags.DEFINE_string('pvc', None, 'k8s: PersistentVolumeClaim mounted at the workdir root.',
                    flag_values=FLAGS)
flags.DEFINE_integer('gpus', 1, 'k8s/slurm: GPUs per run.', flag_values=FLAGS)

_KEYS = {'entries', 'reference', 'protocol', 'seeds', 'split', 'montage_cases'}


@dataclasses.dataclass(frozen=True)
class Study:
  """A study definition, checked."""
  path: str
  entries: dict  # {name: 'config.py:variant'}, the reference first.
  reference: str
  protocol: dict  # {dotted field: command-line string}
  seeds: tuple
  split: str = 'test'
  montage_cases: int = 3


def _entries(path: str, entries) -> dict:
  if isinstance(entries, (list, tuple)):
    names = [pathlib.Path(config_spec.split_spec(s)[0]).stem for s in entries]
    if len(set(names)) != len(names):
      raise ValueError(f'{path}: two entries share a config file name; give entries as '
                       '{name: "config.py:variant"}')
    entries = dict(zip(names, entries))
  if not isinstance(entries, dict) or not entries:
    raise ValueError(f'{path}: "entries" must be a non-empty {{name: "config.py:variant"}} dict '
                     f'or list, got {entries!r}')
  for name, spec in entries.items():
    if not isinstance(spec, str) or not config_spec.split_spec(spec)[0].endswith('.py'):
      raise ValueError(f'{path}: entry {name!r} must be "config.py[:variant]", got {spec!r}')
  return dict(entries)


def load_study(spec: str) -> Study:
  """The Study of `file.py[:arg]`; ValueError naming the file for a malformed definition."""
  path, arg = config_spec.split_spec(spec)
  module = config_spec.load_module(path)
  if not hasattr(module, 'get_study'):
    raise ValueError(f'{path} declares no get_study(arg); see agmr_jax/study.py for the format')
  study = module.get_study(arg or None)
  if not isinstance(study, dict) or not {'entries', 'reference'} <= set(study):
    raise ValueError(f'{path}: get_study() must return a dict with "entries" and "reference", '
                     f'got {study!r}')
  unknown = set(study) - _KEYS
  if unknown:
    raise ValueError(f'{path}: unknown study keys {sorted(unknown)}; known: {sorted(_KEYS)}')
  entries = _entries(path, study['entries'])
  reference = study['reference']
  if reference not in entries:
    raise ValueError(f'{path}: reference {reference!r} is not an entry ({", ".join(entries)})')
  seeds = tuple(study.get('seeds', (0,)))
  if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
    raise ValueError(f'{path}: "seeds" must be distinct integers, got {study.get("seeds")!r}')
  protocol = study.get('protocol', {})
  if not isinstance(protocol, dict):
    raise ValueError(f'{path}: "protocol" must be a {{field: value}} dict, got {protocol!r}')
  entries = {reference: entries[reference], **entries}
  return Study(path, entries, reference,
               {k: config_spec.format_value(v) for k, v in protocol.items()}, seeds,
               study.get('split', 'test'), int(study.get('montage_cases', 3)))


def make_points(study: Study, root: pathlib.Path, overrides: dict[str, str]) -> list:
  """(entry name, seed, sweeps.Point) of every run of the study."""
  shared = {**study.protocol, **overrides}
  out = []
  for name, spec in study.entries.items():
    for seed in study.seeds:
      folder = name if len(study.seeds) == 1 else f'{name},seed={seed}'
      try:
        point = sweeps.make_point(spec, root, {'seed': seed}, shared, folder)
      except (ValueError, KeyError, AttributeError) as e:
        raise ValueError(f'{study.path}: entry {name!r} ({spec}) with the protocol: {e}') from e
      out.append((name, seed, point))
  return out


def machine() -> dict:
  """Where local runs train: OS, CPU model and count, GPUs (nvidia-smi), JAX_PLATFORMS, commit."""
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        cpu = line.partition(':')[2].strip()
        break
  except OSError:
    pass
  info = {'platform': platform.platform(), 'cpu': cpu, 'cpu_count': os.cpu_count(),
          'gpus': [], 'jax_platforms': os.environ.get('JAX_PLATFORMS', ''), 'commit': ''}
  for key, command in (('gpus', ['nvidia-smi', '-L']), ('commit', ['git', 'rev-parse', 'HEAD'])):
    try:
      done = subprocess.run(command, capture_output=True, text=True, timeout=20,
                            cwd=config_spec.REPO, check=False)
    except (OSError, subprocess.SubprocessError):
      continue
    if done.returncode == 0:
      lines = done.stdout.strip().splitlines()
      info[key] = lines if key == 'gpus' else (lines[0] if lines else '')
  return info


def _schedule(f, todo: list, root: pathlib.Path) -> int:
  """Runs or schedules the unfinished points; returns the runs' status."""
  if f.run == 'local' and todo:
    record = {**machine(), 'command': shlex.join(['agmr-study', *sys.argv[1:]])}
    (root / 'machine.json').write_text(json.dumps(record, indent=2))
    return sweep_launcher.run_local(todo, python=f.python)
  if f.run == 'slurm' and todo:
    path = cluster_jobs.write_slurm_array(todo, root, python=f.python, gpus=f.gpus)
    print(f'wrote {path}; submit it with: sbatch {shlex.quote(str(path))}')
  elif f.run == 'k8s' and todo:
    path = cluster_jobs.write_k8s_jobs(todo, root, image=f.image, pvc=f.pvc, gpus=f.gpus)
    print(f'wrote {path}; submit it with: kubectl apply -f {shlex.quote(str(path))}')
  return 0


def run_study(f, extra: list[str]) -> int:
  """Checks the study, runs the unfinished entries, writes the report; returns the status."""
  if f.run == 'k8s' and not (f.image and f.pvc):
    raise ValueError('--run k8s needs --image and --pvc')
  study = load_study(f.study)
  root = pathlib.Path(f.workdir_root).absolute()
  runs_ = make_points(study, root, sweep_launcher.shared_overrides(extra))
  points = [p for _, _, p in runs_]
  for point in points:
    sweeps.check_point(point)
  todo = [p for p in points if sweeps.status(p) != 'finished']
  print(f'{len(study.entries)} networks x {len(study.seeds)} seeds: {len(points) - len(todo)} '
        f'runs finished, {len(todo)} to run')
  root.mkdir(parents=True, exist_ok=True)
  for point in todo:
    sweeps.save_point(point)
  code = _schedule(f, todo, root)
  from agmr_jax.evaluation import study as report  # pylint: disable=g-import-not-at-top
  finished = [(n, s, p) for n, s, p in runs_ if sweeps.status(p) == 'finished']
  paths = report.write(study, finished, root, [n for n in study.entries])
  print(f'wrote {", ".join(str(p) for p in paths)}')
  return code


def main(argv=None) -> int:
  return cli.run(FLAGS, argv, run_study, passthrough=True)


if __name__ == '__main__':
  cli.entry(main)
