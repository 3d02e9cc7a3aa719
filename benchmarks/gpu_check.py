r"""The prepared accelerator check: throughput, determinism, prediction speed and loader supply.

  bash benchmarks/gpu_check.sh                          # on a lent GPU (installs .whl/ first)
  bash benchmarks/gpu_check.sh --resume benchmarks/results/gpu_check-<device>-<date>.json
  python -m benchmarks.gpu_check --dry_run              # CPU: every stage at tiny shapes

Stages, in order, each in its own processes (this orchestrator never initialises JAX or CUDA):
  versions     every package version and origin, the device (benchmarks/gpu_check_env.py)
  throughput   (a) XLA vs PyTorch: every network at its paper input size, train bf16 / fp32 and
               infer bf16 at one batch size, jax / torch_eager / torch_compile (benchmarks.throughput)
  determinism  (b) AGMR-Net at demo scale: two deterministic runs, one SIGKILLed and resumed, one
               without the flags; bitwise comparison and the flags' step-time cost
  predict      (c) seconds per 197x233x189 volume per network, bf16 and fp32 (predict_speed.py)
  loader       (d) the Grain loader's host supply (pipeline_throughput.py) next to (a)'s GPU
               consumption: cores per GPU
Each stage gets at most its cap (--caps) and what is left of --budget_s. Results go to
<out_dir>/gpu_check-<device>-<YYYYMMDD-HHMM>[-dryrun].json and .md (the summary, rewritten after
every stage), beside the harness's own throughput-<device>-<date>.json/.md and logs/. With $OUT set
(the device tool), the files that matter are copied there after every stage, so a call cut off at
its limit still brings back what was measured. `--resume FILE.json` reruns only the stages that
are not complete and continues the throughput table.
"""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time
import traceback

from benchmarks import gpu_check_determinism as determinism
from benchmarks import gpu_check_env as env_lib
from benchmarks import gpu_check_loader as loader
from benchmarks import gpu_check_predict as predict
from benchmarks import gpu_check_throughput as throughput
from benchmarks import throughput_common as common

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGES = ('versions', 'throughput', 'determinism', 'predict', 'loader')
# Seconds per stage at most. On a GPU every stage gets a share of one 9-minute call (510 s); the
# throughput table and the prediction rows need more than their share: a --resume call (the same
# session's second, or a later session's) continues them.
CAPS = {'versions': 30, 'throughput': 180, 'determinism': 150, 'predict': 90, 'loader': 60}
# The dry run is sized by its work, not by caps: on 2 shared cores wall time is mostly waiting.
DRY_CAPS = {'versions': 60, 'throughput': 180, 'determinism': 240, 'predict': 120, 'loader': 180}
RESERVE_S = 10  # Kept back for the summary and the copy to $OUT.


@dataclasses.dataclass
class Context:
  """What every stage needs: the run's settings, folders, and its previous record on --resume."""
  dry_run: bool
  batch: int
  det_steps: int
  networks: tuple[str, ...]
  out_dir: pathlib.Path
  work_dir: pathlib.Path
  stem: str
  label: str
  repo: pathlib.Path = REPO
  previous: dict = dataclasses.field(default_factory=dict)

  def env(self) -> dict:
    """Environment of every child: the repository (and the carried wheels) importable."""
    paths = [str(self.repo), *filter(None, os.environ.get('PYTHONPATH', '').split(os.pathsep))]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(dict.fromkeys(paths)),
           'PYTHONUNBUFFERED': '1'}
    if self.dry_run:  # CPU, cheaper compiles (as tests/launch_helpers.py), one shared cache.
      env.update(JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='', OPENBLAS_NUM_THREADS='1',
                 XLA_FLAGS='--xla_backend_optimization_level=1',
                 JAX_COMPILATION_CACHE_DIR=str(self.work_dir / 'jax_cache'),
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
    return env

  def append_log(self, stage: str, text: str) -> None:
    path = self.out_dir / 'logs' / f'{self.stem}-{stage}.log'
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open('a') as f:
      f.write(text.rstrip() + '\n\n')


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dry_run', action='store_true',
                 help='CPU: tiny shapes and widths, a few steps, every stage (about 1-2 minutes)')
  p.add_argument('--budget_s', type=float, default=0,
                 help='wall seconds for the whole call (default 510 on a GPU, 600 dry)')
  p.add_argument('--stages', default=','.join(STAGES), help='comma-separated subset of the stages')
  p.add_argument('--caps', default='', help='per-stage caps, e.g. throughput=400,predict=60')
  p.add_argument('--networks', default='',
                 help='default: all seven (a 2-level U-Net alone in the dry run)')
  p.add_argument('--batch', type=int, default=16, help='the throughput table\'s batch size')
  p.add_argument('--det_steps', type=int, default=100, help='steps of each determinism run')
  p.add_argument('--out_dir', type=pathlib.Path, default=REPO / 'benchmarks' / 'results')
  p.add_argument('--work_dir', type=pathlib.Path, default=pathlib.Path('/tmp/agmr_gpu_check'),
                 help='data and training workdirs (not results)')
  p.add_argument('--resume', type=pathlib.Path, help='a gpu_check-*.json to continue')
  p.add_argument('--commit', default='', help='the commit measured (the device copy has no .git)')
  args = p.parse_args(argv)
  args.budget_s = args.budget_s or (600 if args.dry_run else 510)
  caps = dict(DRY_CAPS if args.dry_run else CAPS)
  for item in filter(None, args.caps.split(',')):
    name, _, value = item.partition('=')
    if name not in caps:
      p.error(f'--caps: unknown stage {name!r}')
    caps[name] = float(value)
  args.caps = caps
  args.stages = tuple(s for s in args.stages.split(',') if s)
  args.networks = tuple(n for n in args.networks.split(',') if n) or (
      ('unet',) if args.dry_run else tuple(common.NETWORKS))
  if set(args.stages) - set(STAGES) or set(args.networks) - set(common.NETWORKS):
    p.error(f'stages are {", ".join(STAGES)}; networks {", ".join(common.NETWORKS)}')
  return args


def _commit(given: str) -> str:
  if given:
    return given
  proc = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                        check=False)
  return proc.stdout.strip() or 'unknown (no .git here: pass --commit)'


def run_versions(ctx: Context, budget_s: float) -> dict:
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.gpu_check_env'], cwd=ctx.repo,
                        env=ctx.env(), capture_output=True, text=True, timeout=budget_s,
                        check=False)
  ctx.append_log('versions', proc.stdout + proc.stderr)
  env = json.loads(proc.stdout.strip().splitlines()[-1])
  return {'status': 'ok', **env, 'device': env_lib.device_name(env)}


RUNNERS = {'versions': run_versions, 'throughput': throughput.run,
           'determinism': determinism.run, 'predict': predict.run, 'loader': loader.run}


def _start(args) -> tuple[dict, pathlib.Path | None]:
  """(results, json path or None while the device is unknown): fresh, or the --resume file."""
  now = datetime.datetime.now(datetime.timezone.utc)
  invocation = {'date': now.isoformat(timespec='seconds'), 'argv': sys.argv[1:]}
  if args.resume:
    results = json.loads(args.resume.read_text())
    results['meta'].setdefault('resumed', []).append(invocation)
    return results, args.resume
  meta = {**invocation, 'dry_run': args.dry_run, 'commit': _commit(args.commit),
          'batch': args.batch, 'det_steps': args.det_steps, 'networks': list(args.networks),
          'budget_s': args.budget_s, 'caps': args.caps, 'started': f'{now:%Y%m%d-%H%M}'}
  return {'meta': meta, 'stages': {}}, None


def _path_for(results: dict, out_dir: pathlib.Path) -> pathlib.Path:
  device = results['stages'].get('versions', {}).get('device', 'unknown')
  suffix = '-dryrun' if results['meta']['dry_run'] else ''
  name = f"gpu_check-{env_lib.device_tag(device)}-{results['meta']['started']}{suffix}.json"
  return out_dir / name


def _done(results: dict, stage: str) -> bool:
  return results['stages'].get(stage, {}).get('status') == 'ok'


def run_stage(ctx: Context, stage: str, budget_s: float) -> dict:
  start = time.monotonic()
  try:
    record = RUNNERS[stage](ctx, budget_s)
  except Exception as e:  # pylint: disable=broad-except
    record = {'status': 'error', 'error': f'{type(e).__name__}: {e}'[:2000],
              'traceback': traceback.format_exc()[-3000:]}
  record['seconds'] = round(time.monotonic() - start, 1)
  return record


def main(argv=None) -> pathlib.Path:
  args = parse_args(argv)
  deadline = time.monotonic() + args.budget_s
  results, path = _start(args)
  meta = results['meta']
  args.out_dir.mkdir(parents=True, exist_ok=True)
  for stage in args.stages:
    if _done(results, stage):
      print(f'[gpu_check] {stage}: done in an earlier call', flush=True)
      continue
    left = deadline - time.monotonic() - RESERVE_S
    budget = min(args.caps[stage], left)
    ctx = Context(dry_run=meta['dry_run'], batch=meta['batch'], det_steps=meta['det_steps'],
                  networks=tuple(meta['networks']), out_dir=args.out_dir,
                  work_dir=args.work_dir, stem=meta['started'], label=meta['commit'],
                  previous=results['stages'].get(stage, {}))
    if budget < 10:
      record = {**ctx.previous, 'status': ctx.previous.get('status', 'skipped'),
                'note': f'not run: {left:.0f} s left of the budget; continue with --resume'}
    else:
      print(f'[gpu_check] {stage}: up to {budget:.0f} s', flush=True)
      record = run_stage(ctx, stage, budget)
    results['stages'][stage] = record
    path = path or _path_for(results, args.out_dir)
    write(results, path)
    print(f"[gpu_check] {stage}: {record['status']} ({record.get('seconds', 0)} s)", flush=True)
  if path is None:
    path = _path_for(results, args.out_dir)
    write(results, path)
  print(f'[gpu_check] results: {path} and {path.with_suffix(".md")}', flush=True)
  return path


def write(results: dict, path: pathlib.Path) -> None:
  """The JSON record and the summary, then a copy of what matters to $OUT (the device tool)."""
  path.write_text(json.dumps(results, indent=1, default=str) + '\n')
  path.with_suffix('.md').write_text(summary(results, path.parent))
  if os.environ.get('OUT'):
    export(results, path, pathlib.Path(os.environ['OUT']))


def export(results: dict, path: pathlib.Path, out: pathlib.Path) -> None:
  """At most 8 flat files: summary .json/.md, the harness's .json/.md, every log in one tar.gz."""
  out.mkdir(parents=True, exist_ok=True)
  files = [path, path.with_suffix('.md')]
  table = results['stages'].get('throughput', {}).get('file')
  if table:
    files += [path.parent / table, (path.parent / table).with_suffix('.md')]
  for f in files:
    if f.exists():
      shutil.copyfile(f, out / f.name)
  logs = path.parent / 'logs'
  with tarfile.open(out / f'{path.stem}-logs.tar.gz', 'w:gz') as tar:
    for log in sorted(logs.glob(f"{results['meta']['started']}-*.log")):
      tar.add(log, arcname=log.name)


def summary(results: dict, out_dir: pathlib.Path) -> str:
  """The summary markdown: stage table, then one section per stage (files named in out_dir)."""
  meta, stages = results['meta'], results['stages']
  device = stages.get('versions', {}).get('device', 'unknown')
  lines = [f'# Accelerator check on {device}', '']
  if meta['dry_run']:
    lines += ['**CPU DRY RUN at tiny shapes: checks that the script runs end to end. Not a '
              'measurement.**', '']
  lines += [f"Started {meta['date']} (commit {meta['commit']}); command `python -m "
            f"benchmarks.gpu_check {' '.join(meta['argv'])}`"]
  lines += [f"Continued {r['date']}: `{' '.join(r['argv'])}`" for r in meta.get('resumed', [])]
  lines += ['', '| stage | status | seconds |', '|---|---|---|']
  lines += [f"| {s} | {stages[s]['status']} | {stages[s].get('seconds', '-')} |"
            for s in STAGES if s in stages]
  table = stages.get('throughput', {}).get('file')
  sections = (
      ('Versions', 'versions', env_lib.summary_lines),
      ('(a) XLA vs PyTorch throughput', 'throughput',
       lambda r: throughput.summary_lines(r, out_dir)),
      ('(b) Determinism', 'determinism', determinism.summary_lines),
      ('(c) Prediction seconds per 197x233x189 volume', 'predict', predict.summary_lines),
      ('(d) Loader supply vs GPU consumption', 'loader',
       lambda r: loader.summary_lines(r, table and out_dir / table)),
  )
  for title, stage, lines_of in sections:
    lines += ['', f'## {title}', '']
    record = stages.get(stage)
    if not record:
      lines.append('Not run.')
      continue
    if record.get('error'):
      lines.append(f"Error: {record['error'][:500]}")
    try:
      lines += lines_of(record)
    except Exception as e:  # pylint: disable=broad-except
      lines.append(f'(summary of this stage failed: {type(e).__name__}: {e})')
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
