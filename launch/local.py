r"""Runs one training job as N processes under jax.distributed on this machine.

  python -m launch.local --num_processes 2 --cpu_devices_per_process 2 -- \
      --config=configs/unet.py:tiny --workdir=runs/two_process

Everything after `--` goes to `agmr_jax.main`; this launcher adds the coordinator (a free loopback
port), `--num_processes` and `--process_id`. It is the same code path a SLURM, Kubernetes or TPU
pod job takes (launch/slurm.sbatch, launch/k8s.sh, launch/tpu_vm.sh), so a multi-host bug can be
reproduced on a laptop. Each process sees `--cpu_devices_per_process` virtual CPU devices, or with
`--gpus_per_process G` its own G GPUs (CUDA_VISIBLE_DEVICES).

Output lines are prefixed with `[p<i>]`. SIGTERM or Ctrl-C to the launcher is forwarded to every
process (a preemption drill: they agree on a step, checkpoint it and exit with status 75,
`agmr_jax.runtime.EXIT_PREEMPTED`). When one process fails the others are stopped, since they
would otherwise wait in a collective until the coordinator's heartbeat timeout. The exit status
is the first non-zero status of a process, else 0.
"""

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

GRACE_S = 20.0  # How long survivors of a failed process get to stop before SIGKILL.


def free_port() -> int:
  """A TCP port nothing listens on now (the coordinator binds it a moment later)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_env(index: int, *, cpu_devices: int, gpus: int, base: dict | None = None) -> dict:
  """The environment of process `index`: its device view, nothing else changed."""
  env = dict(os.environ if base is None else base)
  if gpus > 0:
    env['CUDA_VISIBLE_DEVICES'] = ','.join(str(index * gpus + g) for g in range(gpus))
  else:
    env['JAX_PLATFORMS'] = 'cpu'
    env['JAX_NUM_CPU_DEVICES'] = str(cpu_devices)
  return env


def start(main_args: list[str], *, num_processes: int, cpu_devices: int = 1, gpus: int = 0,
          port: int | None = None, python: str = sys.executable, env: dict | None = None,
          log_dir: str | pathlib.Path | None = None,
          pipe: bool = False) -> list[subprocess.Popen]:
  """Starts the N processes of one job; returns them in process_id order.

  Args:
    main_args: arguments of `agmr_jax.main` (config, workdir, overrides).
    num_processes: processes under jax.distributed.
    cpu_devices: virtual CPU devices per process (when gpus == 0).
    gpus: GPUs per process; 0 runs on CPU.
    port: coordinator port on 127.0.0.1; None picks a free one.
    python: interpreter to run.
    env: base environment (default: this process's).
    log_dir: write process i's stdout+stderr to `log_dir/process_<i>.log`...
    pipe: ...or capture them (merged, text) on `Popen.stdout`; else they are inherited.
  """
  if num_processes < 1:
    raise ValueError(f'num_processes must be >= 1, got {num_processes}')
  address = f'127.0.0.1:{port or free_port()}'
  procs = []
  for i in range(num_processes):
    cmd = [python, '-m', 'agmr_jax.main', *main_args, f'--coordinator_address={address}',
           f'--num_processes={num_processes}', f'--process_id={i}']
    out = subprocess.PIPE if pipe else None
    if log_dir is not None:
      pathlib.Path(log_dir).mkdir(parents=True, exist_ok=True)
      out = open(pathlib.Path(log_dir) / f'process_{i}.log', 'w')  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(
        cmd, env=process_env(i, cpu_devices=cpu_devices, gpus=gpus, base=env), stdout=out,
        stderr=None if out is None else subprocess.STDOUT, text=pipe))
    if log_dir is not None:
      out.close()  # The child holds its own descriptor.
  return procs


def wait(procs: list[subprocess.Popen], *, grace_s: float = GRACE_S) -> int:
  """Waits for all; if one fails, stops the rest. Returns the first non-zero status, else 0."""
  status = 0
  deadline = None
  while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed and deadline is None:
      status = failed[0]
      deadline = time.monotonic() + grace_s
      for p in procs:
        if p.poll() is None:
          p.send_signal(signal.SIGTERM)
    if deadline is not None and time.monotonic() > deadline:
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.1)
  return status or next((p.returncode for p in procs if p.returncode), 0)


def _prefix_output(procs: list[subprocess.Popen]) -> list[threading.Thread]:
  def pump(i, stream):
    for line in stream:
      sys.stdout.write(f'[p{i}] {line}')
      sys.stdout.flush()
  threads = [threading.Thread(target=pump, args=(i, p.stdout), daemon=True)
             for i, p in enumerate(procs)]
  for t in threads:
    t.start()
  return threads


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m launch.local', description=__doc__.split('\n\n')[0],
      usage='%(prog)s --num_processes N [options] -- <agmr_jax.main arguments>')
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument('--cpu_devices_per_process', type=int, default=1)
  parser.add_argument('--gpus_per_process', type=int, default=0)
  parser.add_argument('--port', type=int, default=None, help='coordinator port (default: free)')
  parser.add_argument('main_args', nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  main_args = args.main_args[1:] if args.main_args[:1] == ['--'] else args.main_args
  if not any(a.startswith('--config') for a in main_args) or not any(
      a.startswith('--workdir') for a in main_args):
    parser.error('pass the agmr_jax.main arguments after --, at least --config=... --workdir=...')
  procs = start(main_args, num_processes=args.num_processes,
                cpu_devices=args.cpu_devices_per_process, gpus=args.gpus_per_process,
                port=args.port, pipe=True)
  threads = _prefix_output(procs)

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)
  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  status = wait(procs)
  for t in threads:
    t.join(timeout=5)
  return status


if __name__ == '__main__':
  sys.exit(main())
