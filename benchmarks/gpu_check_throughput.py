"""gpu_check stage (a): the XLA-vs-PyTorch table through the existing harness (benchmarks.throughput).

Three passes over every network, each one harness call continuing the same results file
(`--resume`), so the most wanted rows are measured first and a later gpu_check call (or a plain
`python -m benchmarks.throughput --resume FILE`) finishes the rest: train bf16, train fp32,
inference bf16. Each pass gets the stage's remaining seconds as the harness's `--time_budget`
(which stops starting rows) and, a little later, a hard timeout (the harness rewrites its files
after every run, so a killed pass keeps what it measured).
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

PASSES = (('bf16', 'train'), ('fp32', 'train'), ('bf16', 'infer'))
FRAMEWORKS = ('jax', 'torch_eager', 'torch_compile')
# Past its budget a pass is killed after this long: a row started just before the budget ran out
# may finish, a worker that hangs may not eat the next stage's time.
GRACE_S = 60


def plan(dry_run: bool) -> tuple[tuple, tuple]:
  """(passes, frameworks): the dry run times one pass without torch.compile (minutes on CPU)."""
  return (PASSES[:1], FRAMEWORKS[:2]) if dry_run else (PASSES, FRAMEWORKS)


def settings(dry_run: bool, batch: int) -> dict:
  """Harness flags that size one pass: a few timed steps are plenty on a GPU (ms per step)."""
  if dry_run:
    return {'smoke': True, 'timeout': 120}
  return {'batch_sizes': batch, 'warmup': 3, 'repeats': 3, 'steps': 5, 'timeout': 240}


def harness_command(python: str, *, dry_run: bool, networks, precision: str, mode: str,
                    batch: int, out_dir: pathlib.Path, time_budget: float,
                    resume: pathlib.Path | None, label: str) -> list[str]:
  """The one place that spells the harness's command line."""
  module = 'benchmarks.gpu_check_tiny' if dry_run else 'benchmarks.throughput'
  cmd = [python, '-m', module, '--networks', ','.join(networks), '--precisions', precision,
         '--modes', mode, '--frameworks', ','.join(plan(dry_run)[1]), '--out_dir', str(out_dir),
         '--time_budget', f'{max(time_budget, 1):.0f}', '--label', label]
  for key, value in settings(dry_run, batch).items():
    cmd += [f'--{key}'] if value is True else [f'--{key}', str(value)]
  if resume:
    cmd += ['--resume', str(resume)]
  return cmd


def _results_file(stdout: str, out_dir: pathlib.Path, since: float) -> pathlib.Path | None:
  found = re.findall(r'(\S+)\.json and \S+\.md', stdout)
  if found:
    return pathlib.Path(found[-1] + '.json')
  fresh = [p for p in out_dir.glob('throughput-*.json') if p.stat().st_mtime >= since]
  return max(fresh, key=lambda p: p.stat().st_mtime) if fresh else None


def run_group(cmd: list[str], cwd, env: dict, timeout: float) -> tuple[str, str]:
  """(stdout, how it ended) of a command in its own process group, which a timeout kills whole:
  the harness's worker (a grandchild, on the GPU) must not outlive it into the next stage."""
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
  try:
    return proc.communicate(timeout=timeout)[0], f'exit {proc.returncode}'
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()[0], 'killed at the stage deadline'


def count_runs(path: pathlib.Path | None) -> tuple[int, int]:
  """(runs recorded, runs that failed) in a harness results file."""
  if not path or not path.exists():
    return 0, 0
  runs = json.loads(path.read_text())['runs']
  return len(runs), sum(r.get('status') != 'ok' for r in runs)


def run(ctx, budget_s: float) -> dict:
  """Runs the passes within `budget_s`; returns the stage record (file, counts, status)."""
  deadline = time.monotonic() + budget_s
  out_dir = ctx.out_dir
  results = out_dir / ctx.previous['file'] if ctx.previous.get('file') else None
  networks = ctx.networks
  log = []
  passes, frameworks = plan(ctx.dry_run)
  for precision, mode in passes:
    left = deadline - time.monotonic()
    if left < 20:
      log.append(f'{precision} {mode}: not started, {left:.0f} s left')
      break
    cmd = harness_command(sys.executable, dry_run=ctx.dry_run, networks=networks,
                          precision=precision, mode=mode, batch=ctx.batch, out_dir=out_dir,
                          time_budget=left - 20, resume=results, label=ctx.label)
    started = time.time()
    stdout, tail = run_group(cmd, ctx.repo, ctx.env(), left + GRACE_S)
    ctx.append_log('throughput', ' '.join(cmd) + '\n' + stdout)
    results = _results_file(stdout, out_dir, started - 1) or results
    log.append(f'{precision} {mode}: {tail}')
  done, failed = count_runs(results)
  expected = len(networks) * len(passes) * len(frameworks)
  status = 'incomplete' if done < expected else 'failed_runs' if failed else 'ok'
  return {'status': status,
          'file': results.name if results else None, 'runs_done': done,
          'runs_failed': failed, 'runs_expected': expected, 'passes': log}


def summary_lines(record: dict, out_dir: pathlib.Path) -> list[str]:
  """The summary's section: where the table is, how complete, and its main table."""
  path = out_dir / record['file'] if record.get('file') else None
  lines = [f"Harness results: `{path.name if path else '-'}` (+ `.md`): "
           f"{record.get('runs_done', 0)} of {record.get('runs_expected', '?')} runs recorded, "
           f"{record.get('runs_failed', 0)} failed. Passes: {'; '.join(record.get('passes', []))}."]
  if path and path.with_suffix('.md').exists():
    text = path.with_suffix('.md').read_text()
    main_table = text[text.find('| network'):].split('\n\n')[0] if '| network' in text else ''
    lines += ['', main_table]
  return lines
