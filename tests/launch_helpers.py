"""Helpers for tests that run `agmr_jax.main` in child processes (distributed, kill/resume, sweeps).

Children share the session's persistent compilation cache, so a program compiles once per session
whichever process needs it first; with SHARED_OVERRIDES every child of these tests trains the same
program (SGD at a constant rate does not bake the epoch length into it). They compile at XLA CPU
optimisation level 1: level 3 costs about twice the CPU time on these tiny programs, and level 0
produced a non-finite gradient at step 2. Every comparison is between runs with the same flags.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np

from agmr_jax import checkpointing

REPO = pathlib.Path(__file__).resolve().parent.parent
TEST_XLA_FLAGS = '--xla_backend_optimization_level=1'
TIMEOUT_S = 600  # The CI machine is shared: generous, but a hang still fails.
SHARED_OVERRIDES = {
    'model_kwargs.features': '(4,8,16)', 'optimizer.name': 'sgd', 'optimizer.schedule': 'constant',
    'deterministic': 'true',  # Its XLA flags are accepted on CPU; every child runs with them.
}


def child_env(cpu_devices: int, **extra: str) -> dict:
  """Environment of a child: CPU devices, this session's compilation cache, quiet threads."""
  env = dict(os.environ)
  env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(cpu_devices),
             XLA_FLAGS=f'{env.get("XLA_FLAGS", "")} {TEST_XLA_FLAGS}'.strip(),
             OPENBLAS_NUM_THREADS='1', PYTHONPATH=str(REPO))
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
  env.update(extra)
  return env


def main_args(data_dir, workdir=None, variant: str = 'tiny', **overrides) -> list[str]:
  """`agmr_jax.main` arguments for configs/unet.py:<variant> with --config.<k>=<v> overrides."""
  args = [f'--config=configs/unet.py:{variant}', f'--config.data.data_dir={data_dir}']
  for key, value in overrides.items():
    args.append(f'--config.{key}={value}')
  if workdir is not None:
    args.append(f'--workdir={workdir}')
  return args


def start_main(args: list[str], env: dict, log: pathlib.Path,
               module: str = 'agmr_jax.main') -> subprocess.Popen:
  log.parent.mkdir(parents=True, exist_ok=True)
  with log.open('a') as out:
    return subprocess.Popen([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, log: pathlib.Path, timeout: float = TIMEOUT_S) -> int:
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(f'timed out; log tail:\n{tail(log)}') from None


def tail(log: pathlib.Path, lines: int = 40) -> str:
  return '\n'.join(log.read_text().splitlines()[-lines:]) if log.exists() else '(no log)'


def logged_steps(workdir: pathlib.Path) -> list[int]:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  # Complete lines only: the run may be appending one while the test reads.
  lines = path.read_text().split('\n')[:-1]
  rows = [json.loads(line) for line in lines if line.strip()]
  return [r['step'] for r in rows if 'train/loss' in r]


def wait_for(predicate, procs: list[subprocess.Popen], log: pathlib.Path,
             timeout: float = TIMEOUT_S, what: str = 'condition') -> None:
  """Polls until `predicate()`; fails if a process exits first or time runs out."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if any(p.poll() is not None for p in procs):
      raise AssertionError(f'process exited before {what}; log tail:\n{tail(log)}')
    if time.monotonic() > deadline:
      raise AssertionError(f'timed out waiting for {what}; log tail:\n{tail(log)}')
    time.sleep(0.02)


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  """Committed checkpoint steps (Orbax's unfinished `<step>.orbax-checkpoint-tmp*` excluded)."""
  directory = workdir / 'checkpoints'
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def read_state(workdir: pathlib.Path, step: int | None = None) -> tuple[int, dict]:
  """(step, the saved TrainState as a dict of numpy arrays), whatever topology wrote it."""
  step = checkpoint_steps(workdir)[-1] if step is None else step
  return step, checkpointing.read_saved_state(workdir, step)


def assert_trees_equal(a, b) -> None:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def max_abs_difference(a, b) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
