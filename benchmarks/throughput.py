r"""XLA (JAX jit) vs PyTorch (eager, torch.compile) throughput of the project's networks.

  python -m benchmarks.throughput --smoke                       # CPU smoke test
  python -m benchmarks.throughput --networks dunet,unet --batch_sizes 8,16,32 \
      --precisions fp32,bf16 --modes train,infer                # full table (GPU)

For each network at its paper input size (throughput_common.NETWORKS), precision,
batch size and mode ('train': forward + backward + Adam update; 'infer': eval
forward + sigmoid/softmax), each framework variant runs in its own subprocess
(`--worker`): 'jax' (the project's jitted train/predict step), 'torch_eager',
'torch_compile'. Reported per run: median ms/step over `repeats` timed runs of
`steps` steps after `warmup` steps (compile time / first step excluded and given
separately), images/s, peak memory, XLA FLOPs per step and MFU against the
device's peak (throughput_common.PEAK_FLOPS). Both frameworks start from the
same synthetic weights and batch; 'check' (mean prediction for infer, first
loss for train, where dropout masks differ) lets a reader see they compute the
same thing.

Writes benchmarks/results/throughput-<device>-<date>[-smoke].json and .md
(rewritten after every run, so an interrupted run keeps what it measured).
`--time_budget S` stops starting rows after S seconds and `--resume FILE.json`
continues a results file, so a long table can be measured in several calls. Every run
records the git commit it was measured at (short hash, '+dirty' when tracked files
differ from it); `--resume` refuses a file holding runs from another commit unless
`--allow_mixed_commits` is given. `--profile DIR` also traces the JAX training steps
(jax.profiler, TensorBoard + Perfetto formats, under DIR) and prints their ten costliest
XLA ops by self time.
"""

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

from benchmarks import throughput_common as common
from benchmarks import throughput_report as report

REPO = pathlib.Path(__file__).resolve().parents[1]
FRAMEWORKS = ('jax', 'torch_eager', 'torch_compile')
RESULT_TAG = 'THROUGHPUT_RESULT '


def _csv(cast):
  return lambda s: tuple(cast(v) for v in s.split(',') if v)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--networks', type=_csv(str), default=tuple(common.NETWORKS))
  p.add_argument('--batch_sizes', type=_csv(int), default=(8, 16, 32))
  p.add_argument('--precisions', type=_csv(str), default=('fp32', 'bf16'))
  p.add_argument('--modes', type=_csv(str), default=('train', 'infer'))
  p.add_argument('--frameworks', type=_csv(str), default=FRAMEWORKS)
  p.add_argument('--torch_layout', choices=('nchw', 'channels_last'), default='channels_last')
  p.add_argument('--warmup', type=int, default=5)
  p.add_argument('--repeats', type=int, default=5, help='timed runs; the median is reported')
  p.add_argument('--steps', type=int, default=10, help='steps per timed run')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--timeout', type=int, default=1200, help='seconds per worker process')
  p.add_argument('--out_dir', type=pathlib.Path, default=REPO / 'benchmarks' / 'results')
  p.add_argument('--label', default='', help='free text stored with the results')
  p.add_argument('--smoke', action='store_true',
                 help='CPU smoke preset: batch 2 (torch refuses train-mode BN over one '
                      "value, CLCI's image pooling at batch 1), no warm-up beyond the "
                      '(excluded) first step, 3 timed runs of 1 step')
  p.add_argument('--resume', type=pathlib.Path,
                 help='results JSON to extend: configurations already in it are skipped')
  p.add_argument('--time_budget', type=float, default=0,
                 help='seconds; no new table row starts after this (0: no limit)')
  p.add_argument('--allow_mixed_commits', action='store_true',
                 help='let --resume add runs to a file measured at another commit')
  p.add_argument('--profile', type=pathlib.Path,
                 help='folder: trace the JAX training steps there and print the ten costliest '
                      'ops (by self time)')
  p.add_argument('--profile_steps', type=int, default=2, help='steps traced with --profile')
  p.add_argument('--worker', help=argparse.SUPPRESS)  # JSON config: run one configuration.
  args = p.parse_args(argv)
  if args.smoke:
    args.batch_sizes, args.warmup, args.repeats, args.steps = (2,), 0, 3, 1
  unknown = set(args.networks) - set(common.NETWORKS)
  if unknown:
    p.error(f'unknown networks {sorted(unknown)}; known: {", ".join(common.NETWORKS)}')
  if set(args.precisions) - {'fp32', 'bf16'} or set(args.modes) - {'train', 'infer'}:
    p.error('precisions are fp32/bf16, modes train/infer')
  if set(args.frameworks) - set(FRAMEWORKS):
    p.error(f'frameworks are {", ".join(FRAMEWORKS)}')
  return args


def run_worker(config: dict) -> None:
  """Worker entry: run one configuration, print its record on one tagged line."""
  try:
    if config['framework'] == 'jax':
      from benchmarks import throughput_jax as worker  # pylint: disable=g-import-not-at-top
    else:
      from benchmarks import throughput_torch as worker  # pylint: disable=g-import-not-at-top
    record = {'status': 'ok', **worker.run(config)}
  except Exception as e:  # pylint: disable=broad-except
    record = {'status': 'error', 'error': f'{type(e).__name__}: {e}'[:2000],
              'traceback': traceback.format_exc()[-4000:]}
  print(RESULT_TAG + json.dumps(record), flush=True)


def spawn(config: dict, timeout: int) -> dict:
  """Runs one configuration in a fresh interpreter; its record, or why there is none."""
  cmd = [sys.executable, '-m', 'benchmarks.throughput', '--worker', json.dumps(config)]
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, 'PYTHONPATH': str(REPO)}, check=False)
  except subprocess.TimeoutExpired:
    return {'status': 'error', 'error': f'worker timed out after {timeout} s'}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_TAG):
      return json.loads(line[len(RESULT_TAG):])
  return {'status': 'error', 'error': f'worker exited {proc.returncode} without a result',
          'stderr_tail': proc.stderr[-3000:]}


def rows(args):
  """Table rows, each the list of its framework runs, measured back to back."""
  for network in args.networks:
    for precision in args.precisions:
      for batch in args.batch_sizes:
        for mode in args.modes:
          yield [{'network': network, 'precision': precision, 'batch': batch, 'mode': mode,
                  'framework': framework,
                  'variant': framework.removeprefix('torch_'),
                  'layout': 'nhwc' if framework == 'jax' else args.torch_layout,
                  'input_shape': common.NETWORKS[network].input_shape,
                  'warmup': args.warmup, 'repeats': args.repeats, 'steps': args.steps,
                  'seed': args.seed, **_profile(args, framework, mode)}
                 for framework in args.frameworks]


def _profile(args, framework: str, mode: str) -> dict:
  if not args.profile or framework != 'jax' or mode != 'train':
    return {}
  return {'profile_dir': str(args.profile.resolve()), 'profile_steps': args.profile_steps}


def _key(run: dict) -> tuple:
  return tuple(run[k] for k in ('network', 'precision', 'batch', 'mode', 'framework', 'layout'))


class MixedCommitsError(Exception):
  """--resume on a file measured at another commit, without --allow_mixed_commits."""


def _check_commits(results: dict, commit: str, path: pathlib.Path) -> None:
  others = sorted({r.get('commit', 'unrecorded') for r in results['runs']} - {commit})
  if others:
    raise MixedCommitsError(
        f'{path} holds runs measured at commit {", ".join(others)}, this tree is at {commit}; '
        'start a new file, or pass --allow_mixed_commits to add rows anyway')


def _start(args, started, commit: str) -> tuple[dict, pathlib.Path | None]:
  """(results, stem): fresh, or the file given to --resume with this invocation noted."""
  invocation = {'date': started.isoformat(timespec='seconds'), 'argv': sys.argv[1:],
                'commit': commit}
  if args.resume:
    results = json.loads(args.resume.read_text())
    if not args.allow_mixed_commits:
      _check_commits(results, commit, args.resume)
    results['meta'].setdefault('resumed', []).append(invocation)
    return results, args.resume.with_suffix('')
  meta = {**invocation, 'smoke': args.smoke, 'label': args.label,
          'settings': {k: getattr(args, k) for k in (
              'warmup', 'repeats', 'steps', 'torch_layout', 'seed')},
          'flop_convention': ' '.join(common.__doc__.split('FLOP convention: ')[1].split()),
          'peak_flops': common.PEAK_FLOPS}
  return {'meta': meta, 'runs': []}, None


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    run_worker(json.loads(args.worker))
    return
  started = datetime.datetime.now(datetime.timezone.utc)
  commit = common.git_commit(REPO)
  try:
    results, out = _start(args, started, commit)
  except MixedCommitsError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  done = {_key(r) for r in results['runs']}
  clock = time.monotonic()
  for row in rows(args):
    todo = [c for c in row if _key(c) not in done]
    if todo and args.time_budget and time.monotonic() - clock > args.time_budget:
      print(f'time budget of {args.time_budget} s spent; continue with --resume {out}.json')
      break
    for config in todo:
      record = {**spawn(config, args.timeout), **config, 'commit': commit}
      results['runs'].append(record)
      print('\n'.join([report.one_line(record), *report.profile_lines(record)]), flush=True)
      out = report.write(results, args.out_dir, started, smoke=results['meta']['smoke'],
                         previous=out)
  print(f'results: {out}.json and {out}.md' if out else 'nothing to run')


if __name__ == '__main__':
  main()
