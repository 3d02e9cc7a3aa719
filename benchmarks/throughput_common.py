"""What the throughput harness's orchestrator and both framework workers share.

Imports neither torch nor (at module level) jax, so the orchestrator stays light
and each worker process loads only its own framework.

FLOP convention: FLOPs per step are XLA's HloCostAnalysis count of the JAX step
(`jit(step).lower(...).cost_analysis()['flops']`, the unoptimised HLO, so the
count does not depend on the backend's fusion): 2 FLOPs per multiply-accumulate
in convolutions and dots, 1 per elementwise op; the training step counts forward,
backward and the Adam update. The same count is used for PyTorch's MFU (the
twins compute the same function).
"""

from collections.abc import Callable
import dataclasses
import resource
import statistics
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
  """One benchmarked network at its paper input size.

  Attributes:
    input_shape: (H, W, C) of one example.
    objective: name in agmr_jax.objectives.OBJECTIVES (and torch_twins.objectives).
    objective_kwargs: the paper's loss options.
    model_kwargs: fields passed to MODELS[name] (the paper defaults when empty).
    num_labels: mask values 0..num_labels-1 (3 with a contour class).
    source: where the input size comes from.
  """
  input_shape: tuple[int, int, int]
  objective: str
  objective_kwargs: dict = dataclasses.field(default_factory=dict)
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  num_labels: int = 2
  source: str = ''


_DUNET_LOSS = {'alpha': 0.48, 'gamma': 1.1}
NETWORKS = {
    'unet': NetworkSpec((192, 192, 4), 'dunet_mix', _DUNET_LOSS,
                        source='AGMR Table 4 baseline on the D-UNet 2.5D input'),
    'attention_unet': NetworkSpec((192, 192, 4), 'dunet_mix', _DUNET_LOSS,
                                  source='AGMR Table 4 baseline on the D-UNet 2.5D input'),
    'dunet': NetworkSpec((192, 192, 4), 'dunet_mix', _DUNET_LOSS,
                         source='D-UNet: 192x192, slices z-2..z+1'),
    'agmr_net': NetworkSpec((192, 192, 4), 'agmr',
                            {**_DUNET_LOSS, 'sobel_weight': 1.0, 'sobel_norm': 'l1',
                             'cpa_weight': 0.15},
                            source='AGMR-Net Table 2: 192x192, slices z-2..z+1'),
    'clci_net': NetworkSpec((224, 176, 1), 'soft_dice', {'smooth': 1.0},
                            source='CLCI-Net: ATLAS T1 cropped to 224x176'),
    'mdanet': NetworkSpec((128, 128, 4), 'mdanet', {'lam': 1.0, 'smooth': 1.0},
                          source='MDANet Table 1: ISLES 2018 {CBF, CBV} | {MTT, Tmax}; 128x128 '
                                 'is the size its 11.22 GFLOPs imply (models/mdanet.py)'),
    'cross_attention_unet': NetworkSpec(
        (224, 224, 5), 'thesis_ce',
        {'class_weights': (0.7, 2.0, 7.0), 'ds_weights': (0.03, 0.045, 0.05, 0.125, 0.25, 0.5)},
        model_kwargs={'num_classes': 3}, num_labels=3,
        source='thesis CT: 224x224, CT+CBF+CBV+MTT+Tmax, background/lesion/contour'),
}

# Dense (no sparsity) tensor-core peaks from NVIDIA's H100/H200 datasheets, FLOP/s.
# 'fp32' is the TF32 tensor-core peak: both frameworks run float32 convolutions
# as TF32 by default on these GPUs (XLA's default precision; torch's
# cudnn.allow_tf32=True); 'fp32_simt' is the non-tensor-core float32 peak.
PEAK_FLOPS = {
    'H100 SXM': {'bf16': 989.4e12, 'fp32': 494.7e12, 'fp32_simt': 66.9e12},
    'H100 PCIe': {'bf16': 756.0e12, 'fp32': 378.0e12, 'fp32_simt': 51.2e12},
    'H200 SXM': {'bf16': 989.4e12, 'fp32': 494.7e12, 'fp32_simt': 66.9e12},
}


def peak_flops(device_name: str, precision: str) -> tuple[float | None, str | None]:
  """(peak FLOP/s, table key) for a device name such as 'NVIDIA H100 80GB HBM3'."""
  name = device_name.upper()
  if 'H200' in name and 'NVL' not in name:
    key = 'H200 SXM'
  elif 'H100' in name and 'PCIE' in name:
    key = 'H100 PCIe'
  elif 'H100' in name and 'NVL' not in name:
    key = 'H100 SXM'
  else:
    return None, None
  return PEAK_FLOPS[key][precision], key


def make_batch(spec: NetworkSpec, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A fixed synthetic batch: standard-normal images, ~5% lesion pixels (uint8 masks)."""
  rng = np.random.default_rng(seed)
  h, w, c = spec.input_shape
  image = rng.standard_normal((batch_size, h, w, c), dtype=np.float32)
  mask = (rng.random((batch_size, h, w)) < 0.05).astype(np.uint8)
  if spec.num_labels > 2:  # the contour class: a sparse second label.
    mask[(mask == 1) & (rng.random(mask.shape) < 0.3)] = 2
  return {'image': image, 'mask': mask}


def synthetic_variables(model, input_shape: tuple[int, ...], seed: int = 0) -> dict:
  """Random Flax variables of `model` without running its init, as numpy float32.

  Shapes come from `jax.eval_shape(model.init, ...)`; kernels are He-normal
  (std sqrt(2 / fan_in), fan_in = prod(kernel.shape[:-1])), other params 0.1 N(0, 1)
  around their init constant (BN scale 1), running means 0.1 N(0, 1), running
  variances U(0.8, 1.2). Both frameworks load the same values, and XLA never
  compiles the (slow on CPU) threefry init graph. Not the training init: a
  benchmark and parity device only.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
      jnp.zeros(input_shape, jnp.float32), train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], 'key', str(path[-1]))
    shape = leaf.shape
    if name == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if name == 'var':
      return rng.uniform(0.8, 1.2, shape).astype(np.float32)
    base = 1.0 if name == 'scale' else 0.0
    return (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, dict(abstract))


def time_steps(step: Callable[[], object], sync: Callable[[object], None], *, warmup: int,
               repeats: int, steps: int) -> list[float]:
  """Seconds per step of each of `repeats` timed runs of `steps` steps (after `warmup`)."""
  out = None
  for _ in range(warmup):
    out = step()
  sync(out)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      out = step()
    sync(out)
    times.append((time.perf_counter() - start) / steps)
  return times


def summarise(times: list[float], batch_size: int) -> dict:
  med = statistics.median(times)
  return {'step_ms': 1e3 * med, 'step_ms_runs': [1e3 * t for t in times],
          'images_per_s': batch_size / med}


def cpu_name() -> str:
  """The host CPU for a results table: '/proc/cpuinfo model name, N cores usable'."""
  import os  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  name = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      name = next((line.split(':', 1)[1].strip() for line in f
                   if line.startswith('model name')), name)
  except OSError:
    pass
  return f'{name or "cpu"}, {len(os.sched_getaffinity(0))} cores usable'


def current_rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> bool:
  """Resets this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); True if done.

  First hands memory that was freed but kept by glibc's malloc back to the OS (malloc_trim):
  after compiling, XLA's freed compilation memory otherwise stays resident (about 320 MiB of
  the U-Net train step's 645 MiB here) and would be counted as the step's.
  """
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_bytes() -> int:
  """Peak RSS since the process started or since reset_peak_rss()."""
  try:
    with open('/proc/self/status') as f:
      line = next(line for line in f if line.startswith('VmHWM:'))
    return int(line.split()[1]) * 1024  # kB.
  except (OSError, StopIteration):
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB.


def host_peak(rss_before: int, reset: bool, after: str) -> tuple[int, str]:
  """(bytes, what they are) of the host-RSS memory column, the same method for both frameworks.

  Args:
    rss_before: RSS before the model was built.
    reset: whether reset_peak_rss() succeeded after `after`.
    after: what the peak was reset after ('compiling', 'the first step').
  """
  when = f'reset after {after}' if reset else 'since process start (reset failed)'
  return peak_rss_bytes() - rss_before, f'host peak RSS ({when}) - RSS before model'


def git_commit(repo) -> str:
  """Short HEAD hash of `repo`, plus '+dirty' if tracked files differ from it ('unknown' if no git)."""
  import subprocess  # pylint: disable=g-import-not-at-top

  def git(*args):
    return subprocess.run(['git', '-C', str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()
  try:
    head = git('rev-parse', '--short', 'HEAD')
    dirty = git('status', '--porcelain', '--untracked-files=no')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  return head + ('+dirty' if dirty else '')
