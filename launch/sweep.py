r"""Runs or schedules the points of a sweep and tabulates them (agmr_jax/sweeps.py: the format).

  agmr-sweep --config configs/unet.py:tiny --workdir_root runs/sweep_unet \
      [--run local|slurm|k8s|none] [--config.field=value ...]
  python -m launch.sweep ...   (the same command)

`--config.field=value` arguments apply to every point, after the variant and before the point's
own values. A finished point (runs.status) is skipped; one with a checkpoint resumes.
  --run local  runs the unfinished points one after another, each in its own process (so
               `config.deterministic` can set XLA flags per point); SIGTERM is passed on to the
               running point, which checkpoints, and the sweep exits with status 75.
  --run slurm  writes `sweep.sbatch`, an array job with one task per unfinished point.
  --run k8s    writes `sweep_jobs.json`, a Kubernetes v1 List of one Job per unfinished point
               (`kubectl apply -f`); needs --image and --pvc.
  --run none   only aggregates.
Every mode ends by writing `sweep.csv` and `sweep.md` under the root: one row per point with its
values, status, last step, final training loss, best validation Dice and the test metrics, plus
the mean over finished points.
"""

import pathlib
import shlex
import signal
import subprocess
import sys

from absl import flags

from agmr_jax import cli
from agmr_jax import config_spec
from agmr_jax import runtime  # JAX-free: the launcher itself never starts JAX.
from agmr_jax import sweeps
from agmr_jax.sweeps import Point
from launch import cluster_jobs

REPO = config_spec.REPO
EXIT_PREEMPTED = runtime.EXIT_PREEMPTED

FLAGS = cli.new_flags()
flags.DEFINE_string('config', None, 'Config file[:variant] with get_sweep().', flag_values=FLAGS,
                    required=True)
flags.DEFINE_string('workdir_root', None, 'One workdir per point goes here.', flag_values=FLAGS,
                    required=True)
flags.DEFINE_enum('run', 'local', ['local', 'slurm', 'k8s', 'none'], 'How to run the points.',
                  flag_values=FLAGS)
flags.DEFINE_string('python', sys.executable, 'Interpreter that runs a point.', flag_values=FLAGS)
flags.DEFINE_string('image', None, 'k8s: container image holding this repository.',
                    flag_values=FLAGS)
flags.DEFINE_string('pvc', None, 'k8s: PersistentVolumeClaim mounted at the workdir root.',
                    flag_values=FLAGS)
flags.DEFINE_string('repo_in_image', None, 'k8s: the repository inside the image (default: the '
                    'same path as here).', flag_values=FLAGS)
flags.DEFINE_integer('gpus', 1, 'k8s/slurm: GPUs per point.', flag_values=FLAGS)


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


def shared_overrides(extra: list[str]) -> dict[str, str]:
  """'--config.field=value' arguments -> {field: value string}."""
  shared = {}
  for item in extra:
    key, sep, value = item.partition('=')
    if not key.startswith('--config.') or not sep:
      raise ValueError(f'unrecognised argument {item!r} (only --config.field=value pass through)')
    shared[key[len('--config.'):]] = value
  return shared


def run_sweep(f, extra: list[str]) -> int:
  """Saves the unfinished points, runs or schedules them, writes the table; returns the status."""
  if f.run == 'k8s' and not (f.image and f.pvc):
    raise ValueError('--run k8s needs --image and --pvc')
  root = pathlib.Path(f.workdir_root).absolute()
  points = sweeps.make_points(f.config, root, shared_overrides(extra))
  for point in points:
    sweeps.check_point(point)
  todo = [p for p in points if sweeps.status(p) != 'finished']
  print(f'{len(points)} points, {len(points) - len(todo)} finished, {len(todo)} to run')
  for point in todo:
    sweeps.save_point(point)
  code = 0
  if f.run == 'local':
    code = run_local(todo, python=f.python)
  elif f.run == 'slurm' and todo:
    path = cluster_jobs.write_slurm_array(todo, root, python=f.python, gpus=f.gpus)
    print(f'wrote {path}; submit it with: sbatch {shlex.quote(str(path))}')
  elif f.run == 'k8s' and todo:
    path = cluster_jobs.write_k8s_jobs(todo, root, image=f.image, pvc=f.pvc, gpus=f.gpus,
                                       repo_dir=f.repo_in_image)
    print(f'wrote {path}; submit it with: kubectl apply -f {shlex.quote(str(path))}')
  rows = sweeps.aggregate(points, root)
  print(sweeps.markdown_table(rows, ['point', *sweeps.COLUMNS]))
  print(f'wrote {root / "sweep.csv"} and {root / "sweep.md"}')
  return code


def main(argv=None) -> int:
  return cli.run(FLAGS, argv, run_sweep, passthrough=True)


if __name__ == '__main__':
  cli.entry(main)
