"""gpu_check stage (b): is a real training run bitwise reproducible on this device?

Four runs of `python -m agmr_jax.main` on the same config and data (AGMR-Net, configs/agmr_net.py
at demo scale for `steps` steps; in the dry run a 2-level U-Net on the tiny dataset, 12 steps):
  det_a, det_b   config.deterministic=True, uninterrupted (det_b not in the dry run);
  det_killed     the same, SIGKILLed after a committed checkpoint, then restarted to the end;
  nondet         config.deterministic=False (XLA's default, autotuned kernels).
Final parameters (and BatchNorm statistics) are compared leaf by leaf in a CPU-only subprocess
(`--compare A B`), so the orchestrator never initialises JAX on the GPU. Step times come from each
run's metrics.jsonl (train/steps_per_s per logging window; the first window holds the compilation
and is dropped).
"""

import argparse
import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import time

from agmr_jax import runtime


def overrides(dry_run: bool, steps: int) -> tuple[str, dict]:
  """(--config value, --config.* overrides) of every run of this stage."""
  common = {'final_eval': 'false', 'data.val_fold': '-1', 'async_checkpoints': 'false'}
  if dry_run:  # The smallest real run: a 2-level U-Net on the tiny dataset (compiles fast on CPU).
    return 'configs/unet.py:tiny', {**common, 'model_kwargs.features': '(4,8)',
                                    'num_train_steps': '12', 'log_every_steps': '1',
                                    'checkpoint_every_steps': '3'}
  # Demo scale (quarter widths, 64x64 slices, batch 8) on 10 synthetic subjects: enough slices for
  # `steps` steps without the minutes that writing the demo's 60 subjects costs.
  return 'configs/agmr_net.py:demo', {
      **common, 'num_train_steps': str(steps), 'data.num_subjects': '10', 'log_every_steps': '10',
      'checkpoint_every_steps': str(max(steps // 2, 1))}


def _command(ctx, workdir: pathlib.Path, deterministic: bool) -> list[str]:
  config, extra = overrides(ctx.dry_run, ctx.det_steps)
  cmd = [sys.executable, '-m', 'agmr_jax.main', f'--config={config}',
         f'--workdir={workdir}', f'--config.data.data_dir={ctx.work_dir / "data"}',
         f'--config.deterministic={str(deterministic).lower()}']
  return cmd + [f'--config.{k}={v}' for k, v in extra.items()]


def _env(ctx) -> dict:
  """ctx.env() without the deterministic flags: agmr_jax.main adds them per config."""
  env = ctx.env()
  flags = [f for f in env.get('XLA_FLAGS', '').split() if f not in runtime.DETERMINISTIC_XLA_FLAGS]
  env['XLA_FLAGS'] = ' '.join(flags)
  return env


def _logged(workdir: pathlib.Path) -> list[dict]:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  lines = path.read_text().split('\n')[:-1]  # Complete lines only: the run may be writing one.
  return [r for r in (json.loads(line) for line in lines if line.strip()) if 'train/loss' in r]


def _train(ctx, name: str, deterministic: bool, deadline: float, kill_after: int = 0) -> dict:
  """One run to the end (or SIGKILLed once past step `kill_after`, then restarted)."""
  workdir = ctx.work_dir / 'determinism' / name
  log = ctx.out_dir / 'logs' / f'{ctx.stem}-determinism-{name}.log'
  log.parent.mkdir(parents=True, exist_ok=True)
  cmd, env, start = _command(ctx, workdir, deterministic), _env(ctx), time.monotonic()
  with log.open('w') as out:
    proc = subprocess.Popen(cmd, cwd=ctx.repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    killed = False
    if kill_after:
      while proc.poll() is None and time.monotonic() < deadline:
        if any(r['step'] > kill_after for r in _logged(workdir)):
          proc.send_signal(signal.SIGKILL)
          killed = True
          break
        time.sleep(0.05)
      killed_at = max((r['step'] for r in _logged(workdir)), default=0)
      proc.wait()
      proc = subprocess.Popen(cmd, cwd=ctx.repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
      code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      code = 'timeout'
  rates = [r['train/steps_per_s'] for r in _logged(workdir)][1:]
  record = {'exit': code, 'seconds': round(time.monotonic() - start, 1), 'log': log.name,
            'step_ms': round(1e3 / statistics.median(rates), 2) if rates else None}
  if kill_after:
    text = log.read_text()
    record['killed_after_step'] = killed_at if killed else None  # None: it ended first.
    resumed = re.findall(r'Resumed from step (\d+)', text)
    record['resumed_from'] = int(resumed[-1]) if resumed else None
  return record


def run(ctx, budget_s: float) -> dict:
  deadline = time.monotonic() + budget_s
  runs = {}
  kill_after = 4 if ctx.dry_run else ctx.det_steps // 2 + ctx.det_steps // 10
  plan = (('det_a', True, 0), ('det_b', True, 0), ('det_killed', True, kill_after),
          ('nondet', False, 0))
  if ctx.dry_run:  # CPU time is dear there; det_killed is already a second deterministic run.
    plan = tuple(p for p in plan if p[0] != 'det_b')
  for name, deterministic, kill in plan:
    if time.monotonic() > deadline - 5:
      runs[name] = {'exit': 'not started: stage budget spent'}
      continue
    runs[name] = _train(ctx, name, deterministic, deadline, kill)
  ok = {name for name, r in runs.items() if r.get('exit') == 0}
  comparisons = {}
  for other in [name for name, _, _ in plan[1:]]:
    if {'det_a', other} <= ok:
      comparisons[f'det_a vs {other}'] = _compare(ctx, 'det_a', other)
  det_ms, nondet_ms = runs.get('det_a', {}).get('step_ms'), runs.get('nondet', {}).get('step_ms')
  complete = len(ok) == len(plan) and len(comparisons) == len(plan) - 1
  return {'status': 'ok' if complete else 'incomplete',
          'config': ' '.join(_command(ctx, pathlib.Path('WORKDIR'), True)[3:]),
          'runs': runs, 'comparisons': comparisons,
          'deterministic_step_cost': round(det_ms / nondet_ms, 3) if det_ms and nondet_ms else None}


def _compare(ctx, a: str, b: str) -> dict:
  root = ctx.work_dir / 'determinism'
  env = {**ctx.env(), 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.gpu_check_determinism', '--compare', str(root / a), str(root / b)],
                        cwd=ctx.repo, env=env, capture_output=True, text=True, check=False)
  try:
    return json.loads(proc.stdout.strip().splitlines()[-1])
  except (IndexError, json.JSONDecodeError):
    return {'error': (proc.stderr or proc.stdout)[-2000:]}


def _read_state(workdir: pathlib.Path) -> tuple[int, dict]:
  """(step, the last saved TrainState as numpy arrays)."""
  from agmr_jax import checkpointing  # pylint: disable=g-import-not-at-top
  step = max(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  return step, checkpointing.read_saved_state(workdir, step)


def compare(a: pathlib.Path, b: pathlib.Path) -> dict:
  """Leaf-by-leaf comparison of two runs' final states (params, batch stats, optimizer state)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  (step_a, state_a), (step_b, state_b) = _read_state(a), _read_state(b)
  leaves_a = jax.tree_util.tree_leaves_with_path(state_a)
  leaves_b = jax.tree.leaves(state_b)
  worst, worst_name, differing = 0.0, None, 0
  for (path, x), y in zip(leaves_a, leaves_b):
    if x.shape != y.shape or x.tobytes() != y.tobytes():
      differing += 1
      diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.
      if diff >= worst:
        worst, worst_name = diff, jax.tree_util.keystr(path)
  return {'steps': [step_a, step_b], 'leaves': len(leaves_a),
          'same_structure': len(leaves_a) == len(leaves_b), 'bitwise_equal': differing == 0,
          'leaves_differing': differing, 'max_abs_difference': worst, 'worst_leaf': worst_name}


def summary_lines(record: dict) -> list[str]:
  lines = [f"Runs: `python -m agmr_jax.main {record.get('config', '')}` "
           '(deterministic=False for `nondet`).', '',
           '| run | exit | wall s | median step ms | notes |', '|---|---|---|---|---|']
  for name, r in record.get('runs', {}).items():
    notes = (f"SIGKILL after step {r['killed_after_step']}, resumed from step {r['resumed_from']}"
             if 'killed_after_step' in r else '')
    lines.append(f"| {name} | {r.get('exit')} | {r.get('seconds', '-')} | "
                 f"{r.get('step_ms') or '-'} | {notes} |")
  lines += ['', '| comparison | bitwise equal | leaves differing | max abs difference | '
            'worst leaf |', '|---|---|---|---|---|']
  for name, c in record.get('comparisons', {}).items():
    lines.append(f"| {name} | {c.get('bitwise_equal')} | {c.get('leaves_differing')}/"
                 f"{c.get('leaves')} | {c.get('max_abs_difference', c.get('error', '-'))} | "
                 f"`{c.get('worst_leaf')}` |")
  cost = record.get('deterministic_step_cost')
  lines += ['', f'Step time with the deterministic flags / without: {cost or "-"} (median of the '
            'logging windows after the first; includes host data loading).']
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description='Compare two gpu_check determinism workdirs.')
  parser.add_argument('--compare', nargs=2, type=pathlib.Path, required=True)
  args = parser.parse_args()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  print(json.dumps(compare(*args.compare)))


if __name__ == '__main__':
  main()
