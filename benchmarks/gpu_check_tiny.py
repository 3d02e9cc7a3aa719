r"""The throughput harness at tiny shapes, for gpu_check's CPU dry run.

  python -m benchmarks.gpu_check_tiny <benchmarks.throughput flags>

Same orchestrator, workers, report and resume as `python -m benchmarks.throughput`; only the
networks' input shapes and widths are replaced by TINY (in the orchestrator and in every worker
process), so the dry run exercises the harness end to end in seconds. The harness has no flag for
this; if it grows one, gpu_check_throughput.harness_command can use it and this module can go.
"""

import dataclasses
import json
import os
import subprocess
import sys

from benchmarks import throughput
from benchmarks import throughput_common as common

# network -> (input (H, W, C), model fields): the tiny variants of configs/*.py at 32x32.
TINY = {
    'unet': ((16, 16, 4), {'features': (4, 8)}),
    'attention_unet': ((32, 32, 4), {'features': (4, 8, 16, 32, 64)}),
    'dunet': ((32, 32, 4), {'features': (4, 8, 16, 32, 64), 'features_3d': (4, 8, 16)}),
    'agmr_net': ((32, 32, 4), {'features': (4, 8, 16, 32, 64), 'features_3d': (4, 8, 16)}),
    'clci_net': ((32, 32, 1), {'features': (4, 8, 16), 'fusion_expansion': 2,
                               'aspp_features': 8, 'aspp_out_features': 16}),
    'mdanet': ((32, 32, 4), {'features': (4, 8, 16, 32, 64)}),
    'cross_attention_unet': ((32, 32, 5), {'features': (4, 8, 16, 32, 64, 128)}),
}


def patch_networks() -> None:
  """Replaces throughput_common.NETWORKS' shapes and widths by TINY, in place."""
  for name, (shape, fields) in TINY.items():
    spec = common.NETWORKS[name]
    common.NETWORKS[name] = dataclasses.replace(
        spec, input_shape=shape, model_kwargs={**spec.model_kwargs, **fields},
        source=f'gpu_check dry run: tiny shapes {shape}')


def spawn(config: dict, timeout: int) -> dict:
  """throughput.spawn, with the worker started through this module (so it is tiny too)."""
  cmd = [sys.executable, '-m', 'benchmarks.gpu_check_tiny', '--worker', json.dumps(config)]
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      p for p in (str(throughput.REPO), os.environ.get('PYTHONPATH', '')) if p)}
  try:
    proc = subprocess.run(cmd, cwd=throughput.REPO, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
  except subprocess.TimeoutExpired:
    return {'status': 'error', 'error': f'worker timed out after {timeout} s'}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(throughput.RESULT_TAG):
      return json.loads(line[len(throughput.RESULT_TAG):])
  return {'status': 'error', 'error': f'worker exited {proc.returncode} without a result',
          'stderr_tail': proc.stderr[-3000:]}


def main(argv=None) -> None:
  patch_networks()
  throughput.spawn = spawn
  throughput.main(argv)


if __name__ == '__main__':
  main()
