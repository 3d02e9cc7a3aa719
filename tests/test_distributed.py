"""Multi-host training under jax.distributed on this machine, and the cluster launch scripts.

Two processes with 2 CPU devices each (loopback coordinator, gloo collectives) train the tiny
U-Net; once both have set up (after jax.distributed.initialize, before the first step compiles),
process 1 alone gets SIGTERM, and Orbax/JAX's preemption sync must make both processes save the
same step and exit with status 75; a restart finishes the run. The notice is sent that early
because it reaches the other process through the coordination service after a delay of its own:
sent after step 2 of this fast tiny run, it once arrived only at the last step (a loaded CI
machine), leaving nothing to resume. Compiling the first step gives it seconds to arrive.

The result must match one process with 4 devices within a tolerance, not bit for bit: each
process reads every second example of the shuffled order, so a global batch holds the same 8
examples in another row order, and the per-device partial sums (BatchNorm statistics, gradients)
add up in another order. SGD keeps those float32 rounding differences at their size (measured
after 8 steps: at most 6e-8 on parameters, 1.2e-7 on BatchNorm statistics); Adam's first steps,
about lr * sign(g), would turn them into lr-sized jumps wherever a gradient is near zero. The
tolerance, |a - b| <= 1e-6 + 1e-5 |b| elementwise, is about 10 times the measured rounding
differences and 1e4 times smaller than what the run changes its parameters by over its last 3
steps (0.01; the test requires more than 100 times ATOL). The relative term covers the larger
BatchNorm variances; the absolute one parameters near zero, whose relative differences are large.
"""

import json
import os
import pathlib
import signal
import subprocess

import jax
import numpy as np
import pytest

from agmr_jax import runtime
from launch import local
from tests import launch_helpers as helpers

TOTAL_STEPS = 8
OVERRIDES = {
    **helpers.SHARED_OVERRIDES,  # SGD, see above.
    'final_eval': False, 'data.val_fold': -1, 'num_train_steps': TOTAL_STEPS,
    'log_every_steps': 1, 'checkpoint_every_steps': 100,  # Only the preemption and the end save.
}
ATOL, RTOL = 1e-6, 1e-5


def _two_processes(args, workdir, log_dir):
  return local.start(args + [f'--workdir={workdir}'], num_processes=2, cpu_devices=2,
                     env=helpers.child_env(2), log_dir=log_dir)


def _set_up(log: pathlib.Path) -> bool:
  """Process 0 logged its run's size: its set-up ran collectives with process 1, so process 1 is
  past jax.distributed.initialize and its SIGTERM notifier is installed."""
  return log.exists() and 'train slices/epoch' in log.read_text()


@pytest.fixture(scope='module')
def runs(tiny_built, data_dir, tmp_path_factory):
  """A 2x2-device run preempted through process 1 and resumed, and a 1x4-device run."""
  root = tmp_path_factory.mktemp('distributed')
  two, one = root / 'two_processes', root / 'one_process'
  args = helpers.main_args(data_dir, **OVERRIDES)
  reference = helpers.start_main(args + [f'--workdir={one}'], helpers.child_env(4),
                                 root / 'one.log')
  procs = _two_processes(args, two, root / 'first')
  first_log = root / 'first' / 'process_0.log'
  helpers.wait_for(lambda: _set_up(first_log), procs, first_log, what='the set-up')
  procs[1].send_signal(signal.SIGTERM)  # Only the non-coordinator process gets the notice.
  first = [helpers.wait(p, root / 'first' / f'process_{i}.log') for i, p in enumerate(procs)]
  stopped = {'logged': helpers.logged_steps(two), 'saved': helpers.checkpoint_steps(two)}
  procs = _two_processes(args, two, root / 'second')
  second = [helpers.wait(p, root / 'second' / f'process_{i}.log') for i, p in enumerate(procs)]
  return dict(root=root, two=two, one=one, first=first, second=second, stopped=stopped,
              reference=helpers.wait(reference, root / 'one.log'))


def test_preemption_of_one_process_checkpoints_all_at_one_step(runs):
  assert runs['first'] == [runtime.EXIT_PREEMPTED] * 2
  logged, saved = runs['stopped']['logged'], runs['stopped']['saved']
  assert saved == [logged[-1]] and logged[-1] < TOTAL_STEPS
  for i in range(2):
    log = (runs['root'] / 'first' / f'process_{i}.log').read_text()
    assert f'Preemption sync point at step {saved[0]}' in log
  data_iter = runs['two'] / 'checkpoints' / str(saved[0]) / 'data_iter'
  assert sorted(p.name for p in data_iter.glob('process_*')) == [
      'process_0-of-2.json', 'process_1-of-2.json']  # Each process saved its own shard's position.


def test_two_processes_match_one_process_with_four_devices(runs):
  assert runs['second'] == [0, 0] and runs['reference'] == 0
  # Only process 0 writes metrics: each step once, the resumed part continuing the first.
  assert helpers.logged_steps(runs['two']) == list(range(1, TOTAL_STEPS + 1))
  step_two, two = helpers.read_state(runs['two'])
  step_one, one = helpers.read_state(runs['one'])
  assert step_two == step_one == TOTAL_STEPS
  for part in ('params', 'batch_stats'):
    for a, b in zip(jax.tree.leaves(two[part]), jax.tree.leaves(one[part])):
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
  # The tolerance separates: the run itself moved further than it over its last steps.
  _, earlier = helpers.read_state(runs['two'], runs['stopped']['saved'][0])
  assert helpers.max_abs_difference(two['params'], earlier['params']) > 100 * ATOL


@pytest.mark.parametrize('argv', [['--num_processes', '2'],
                                  ['--num_processes', '2', '--', '--config=configs/unet.py']])
def test_local_launcher_requires_main_arguments(capsys, argv):
  """Without --config and --workdir for agmr_jax.main: a usage error (exit status 2), no run."""
  with pytest.raises(SystemExit, match='^2$') as info:  # str(SystemExit) is its exit status
    local.main(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('usage: python -m launch.local --num_processes N [options] -- ')
  assert ('python -m launch.local: error: pass the agmr_jax.main arguments after --, at least '
          '--config=... --workdir=...') in err


def test_process_env_gives_each_process_its_devices():
  assert local.process_env(1, cpu_devices=2, gpus=0, base={})['JAX_NUM_CPU_DEVICES'] == '2'
  assert local.process_env(1, cpu_devices=1, gpus=2, base={})['CUDA_VISIBLE_DEVICES'] == '2,3'


def _fake_slurm(bin_dir: pathlib.Path, exit_status: int) -> dict:
  """srun running its command once per task, scontrol answering and recording requeues."""
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text(
      '#!/bin/bash\nshift  # --kill-on-bad-exit=0\nfor ((i = 0; i < SLURM_NTASKS; i++)); do\n'
      '  SLURM_PROCID=$i "$@" || status=$?\ndone\nexit ${status:-0}\n')
  (bin_dir / 'scontrol').write_text(
      '#!/bin/bash\nif [ "$1" = show ]; then printf "node-a\\nnode-b\\n"; else '
      'echo "$@" >> "$FAKE_LOG"; fi\n')
  (bin_dir / 'python').write_text(
      f'#!/bin/bash\necho "$@" >> "$FAKE_LOG"\nexit {exit_status}\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  return dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', PYTHON=str(bin_dir / 'python'),
              FAKE_LOG=str(bin_dir / 'calls'), SLURM_JOB_NODELIST='node-[a-b]', SLURM_NTASKS='2',
              SLURM_JOB_ID='77', SLURM_SUBMIT_DIR=str(helpers.REPO))


def test_slurm_script_runs_one_process_per_task_and_requeues_when_preempted(tmp_path):
  env = _fake_slurm(tmp_path / 'bin', exit_status=runtime.EXIT_PREEMPTED)
  env.update(CONFIG='configs/unet.py:tiny', WORKDIR='/shared/run')
  done = subprocess.run(['bash', 'launch/slurm.sbatch', '--config.batch_size=16'], cwd=helpers.REPO,
                        env=env, capture_output=True, text=True)
  assert done.returncode == runtime.EXIT_PREEMPTED, done.stderr
  calls = (tmp_path / 'bin' / 'calls').read_text().splitlines()
  for i in range(2):
    assert calls[i] == ('-m agmr_jax.main --config=configs/unet.py:tiny --workdir=/shared/run '
                        f'--coordinator_address=node-a:12345 --num_processes=2 --process_id={i} '
                        '--config.batch_size=16')
  assert calls[2] == 'requeue 77'


REQUIRED = {  # Each launch script's required variables, with a value that passes its checks.
    'slurm.sbatch': {'CONFIG': 'configs/unet.py', 'WORKDIR': '/w'},
    'k8s.sh': {'NAME': 'a', 'IMAGE': 'i', 'NUM_HOSTS': '2', 'CONFIG': 'c', 'WORKDIR': '/runs/a',
               'PVC': 'p'},
    'tpu_vm.sh': {'TPU_NAME': 't', 'ZONE': 'z', 'CONFIG': 'c', 'WORKDIR': '/w'},
}


@pytest.mark.parametrize('script,missing', [(s, v) for s, names in REQUIRED.items() for v in names])
def test_launch_scripts_name_the_missing_variable(script, missing):
  """With one required variable unset, a script stops at once (status 2) and names it."""
  names = {v for required in REQUIRED.values() for v in required}
  base = {k: v for k, v in os.environ.items() if k not in names and not k.startswith('SLURM')}
  env = {**base, **{k: v for k, v in REQUIRED[script].items() if k != missing}}
  done = subprocess.run(['bash', f'launch/{script}'], cwd=helpers.REPO, env=env,
                        capture_output=True, text=True, timeout=30)
  assert done.returncode == 2, done.stderr
  assert f'error: {missing} is not set' in done.stderr
  assert done.stdout == ''  # Nothing ran before the check.


def test_slurm_script_refuses_to_run_outside_slurm():
  base = {k: v for k, v in os.environ.items() if not k.startswith('SLURM')}
  done = subprocess.run(['bash', 'launch/slurm.sbatch'], cwd=helpers.REPO,
                        env={**base, **REQUIRED['slurm.sbatch']}, capture_output=True, text=True,
                        timeout=30)
  assert done.returncode == 2 and 'not inside a SLURM job' in done.stderr


def test_k8s_manifest_gives_every_pod_the_coordinator_and_its_index():
  yaml = pytest.importorskip('yaml')
  env = dict(os.environ, NAME='agmr-1', IMAGE='img', NUM_HOSTS='3', CONFIG='configs/unet.py',
             WORKDIR='/runs/a', PVC='runs')
  done = subprocess.run(['bash', 'launch/k8s.sh', '--dry-run', '--config.seed=2'],
                        cwd=helpers.REPO, env=env, capture_output=True, text=True, check=True)
  jobset = yaml.safe_load(done.stdout)
  job = jobset['spec']['replicatedJobs'][0]['template']['spec']
  assert job['parallelism'] == job['completions'] == 3 and job['completionMode'] == 'Indexed'
  container = job['template']['spec']['containers'][0]
  command = ' '.join(container['args'][0].split())
  assert ('--coordinator_address=agmr-1-workers-0-0.agmr-1:12345 --num_processes=3 '
          '--process_id=$JOB_COMPLETION_INDEX --config.seed=2') in command
  assert json.dumps(jobset).count('${') == 0  # Every template variable was filled in.
