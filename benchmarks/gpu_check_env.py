"""gpu_check stage 'versions': every package version, where it was imported from, and the device.

Run as its own process (`python -m benchmarks.gpu_check_env`, one JSON line) so the orchestrator
never initialises JAX or CUDA itself. Wheels carried to the GPU machine are installed into
/tmp/site (benchmarks/gpu_check.sh); `origin` says which copy of a package was used.
"""

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys


# Distribution names: the machine's own stack, then what gpu_check.sh installs from .whl/.
PACKAGES = (
    'jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda13-pjrt', 'jax-cuda12-plugin',
    'jax-cuda12-pjrt', 'flax', 'optax', 'orbax-checkpoint', 'chex', 'tensorstore', 'torch',
    'triton', 'numpy', 'scipy', 'ml-dtypes', 'absl-py', 'etils', 'protobuf',
    'grain', 'tensorflow-datasets', 'array-record', 'tensorflow-metadata', 'nibabel', 'nilearn',
    'ml-collections', 'tensorboardX', 'dm-tree', 'simple-parsing', 'immutabledict', 'promise',
)


def _version(dist: str) -> dict:
  try:
    d = importlib.metadata.distribution(dist)
  except importlib.metadata.PackageNotFoundError:
    return {'version': None}
  return {'version': d.version, 'origin': str(d.locate_file(''))}


def _nvidia_smi() -> str | None:
  if not shutil.which('nvidia-smi'):
    return None
  out = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                        '--format=csv,noheader'], capture_output=True, text=True, check=False)
  return out.stdout.strip() or out.stderr.strip()[-300:]


def _jax_devices() -> dict:
  try:
    import jax  # pylint: disable=g-import-not-at-top
    devices = jax.devices()
    return {'platform': devices[0].platform, 'count': len(devices),
            'kind': getattr(devices[0], 'device_kind', str(devices[0]))}
  except Exception as e:  # pylint: disable=broad-except
    return {'error': f'{type(e).__name__}: {e}'[:500]}


def _torch_device() -> dict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
    if not torch.cuda.is_available():
      return {'cuda': False}
    return {'cuda': True, 'name': torch.cuda.get_device_name(0), 'cuda_version': torch.version.cuda,
            'cudnn': torch.backends.cudnn.version()}
  except Exception as e:  # pylint: disable=broad-except
    return {'error': f'{type(e).__name__}: {e}'[:500]}


def collect() -> dict:
  """Versions, devices, host; JAX is initialised on its default backend (the GPU if present)."""
  return {
      'python': platform.python_version(), 'executable': sys.executable,
      'packages': {name: _version(name) for name in PACKAGES},
      'jax_devices': _jax_devices(), 'torch_device': _torch_device(),
      'nvidia_smi': _nvidia_smi(), 'host_cpus': len(os.sched_getaffinity(0)),
      'cpu': platform.processor() or platform.machine(),
      'env': {k: os.environ.get(k) for k in ('XLA_FLAGS', 'JAX_PLATFORMS', 'PYTHONPATH')},
  }


def device_name(env: dict) -> str:
  """The accelerator's name ('NVIDIA H100 80GB HBM3'), or 'cpu'."""
  jax_dev = env.get('jax_devices', {})
  if jax_dev.get('platform') == 'gpu':
    return jax_dev['kind']
  return env.get('torch_device', {}).get('name') or 'cpu'


def device_tag(name: str) -> str:
  """File-name form of a device name, as benchmarks/throughput_report.py writes it."""
  if name == 'cpu':
    return 'cpu'
  return re.sub(r'[^a-z0-9]+', '-', name.lower().replace('nvidia', '')).strip('-')


def summary_lines(env: dict) -> list[str]:
  lines = [f"Python {env.get('python')} (`{env.get('executable')}`), {env.get('host_cpus')} host "
           f"CPUs; JAX devices {json.dumps(env.get('jax_devices'))}; torch "
           f"{json.dumps(env.get('torch_device'))}; nvidia-smi: {env.get('nvidia_smi') or '-'}.",
           '', '| package | version | from |', '|---|---|---|']
  for name, info in env.get('packages', {}).items():
    origin = info.get('origin') or ''
    where = '/tmp/site (carried wheel)' if origin.startswith('/tmp/site') else origin
    lines.append(f"| {name} | {info.get('version') or '-'} | {where} |")
  return lines


if __name__ == '__main__':
  print(json.dumps(collect()))
