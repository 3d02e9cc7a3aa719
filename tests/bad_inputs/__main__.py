"""Runs the bad-input corpus as subprocesses against one or more checkouts; prints a markdown
table (exit status and the message a user sees) per checkout, side by side.

  python -m tests.bad_inputs --repos /path/to/old,/work/main --scratch /tmp/bad_inputs

The shared inputs (the tiny dataset and a run trained 6 steps) are made once with the current
checkout's library and reused; each case gets a fresh folder per checkout.
"""

import argparse
import os
import pathlib
import subprocess
import sys

from tests.bad_inputs import corpus

REPO = pathlib.Path(__file__).resolve().parents[2]


def _shared(scratch: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  from input_pipeline import datasets  # pylint: disable=g-import-not-at-top
  from input_pipeline import recipes  # pylint: disable=g-import-not-at-top
  data_dir = scratch / 'data'
  datasets.prepare('synthetic_tiny', recipes.RECIPES['tiny_2p5d'], data_dir=data_dir,
                   num_subjects=10)
  workdir = scratch / 'run'
  if not (workdir / 'eval' / 'test' / 'cases.csv').exists():
    subprocess.run([sys.executable, '-m', 'agmr_jax.main', '--config=configs/unet.py:tiny',
                    f'--workdir={workdir}', f'--config.data.data_dir={data_dir}'],
                   cwd=REPO, check=True, capture_output=True)
  return workdir, data_dir / 'raw' / 'synthetic_tiny-n10-seed0', data_dir


def _message(proc: subprocess.CompletedProcess) -> str:
  """The line a user reads: the `error:` line, else a traceback's last line, else the last."""
  lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith('error:')]
  text = errors[0] if errors else lines[-1] if lines else ''
  if 'Traceback (most recent call last)' in proc.stderr:
    text = f'traceback ({len(proc.stderr.splitlines())} lines): {lines[-1] if lines else ""}'
  return text.replace('|', '\\|')[:160]


def run_case(case: corpus.Case, repo: pathlib.Path, env: corpus.Env) -> tuple[int, str]:
  argv = case.make(env)
  proc = subprocess.run([sys.executable, '-m', corpus.COMMANDS[case.command], *argv], cwd=repo,
                        capture_output=True, text=True, timeout=600, check=False,
                        env={**os.environ, 'PYTHONPATH': str(repo), 'JAX_PLATFORMS': 'cpu'})
  return proc.returncode, _message(proc)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--repos', default=str(REPO), help='comma-separated checkouts')
  p.add_argument('--scratch', type=pathlib.Path, required=True)
  p.add_argument('--only', default='', help='substring of the case names to run')
  args = p.parse_args(argv)
  repos = [pathlib.Path(r).resolve() for r in args.repos.split(',')]
  run, raw, data_dir = _shared(args.scratch)
  print('| command: bad input | ' + ' | '.join(f'{r.name}: status, message' for r in repos) + ' |')
  print('|---|' + '---|' * len(repos))
  for i, (name, case) in enumerate(sorted(corpus.CASES.items())):
    if args.only not in name:
      continue
    cells = []
    for j, repo in enumerate(repos):
      tmp = args.scratch / f'case{i}-{j}'
      tmp.mkdir(parents=True, exist_ok=False)
      status, message = run_case(case, repo, corpus.Env(tmp, run, raw, data_dir))
      cells.append(f'{status}: {message}')
    print(f'| {name} | ' + ' | '.join(cells) + ' |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
