"""Process-level run settings that must exist before JAX starts: XLA flags and exit statuses.

Importing this module does not import JAX, so `agmr_jax.main` and the launchers can call it
before JAX creates its backends (XLA reads XLA_FLAGS once, when the first backend is built).

`config.deterministic = True` adds DETERMINISTIC_XLA_FLAGS:
  --xla_gpu_deterministic_ops=true  deterministic scatter/reduction/GEMM/convolution kernels on GPU;
      compilation fails on an op without one (select-and-scatter: the gradient of a windowed
      max-pool), which is why the models pool with layers.max_pool_2x2 (reshape + max, whose
      gradient is a select, not a scatter);
  --xla_gpu_autotune_level=0  no timing-based kernel choice, so two compilations of a program pick
      the same kernels (autotuning measures speed, and noise can flip the winner between runs).
CPU execution is already deterministic at a fixed device count; the flags are accepted and inert.
Seeds are not set here: everything random derives from config.seed in training/setup.py.
"""

import os
import sys
from collections.abc import MutableMapping

DETERMINISTIC_XLA_FLAGS = ('--xla_gpu_deterministic_ops=true', '--xla_gpu_autotune_level=0')

# Exit status of a run stopped by SIGTERM or a preemption notice after its checkpoint was
# committed: EX_TEMPFAIL ("try again later") from sysexits.h, so schedulers can tell "resubmit
# me" (75) from "finished" (0) and "failed" (1, or a signal): a Kubernetes Job would count an
# exit 0 as done and never restart the pod.
EXIT_PREEMPTED = 75


def set_xla_flags(deterministic: bool,
                  environ: MutableMapping[str, str] | None = None) -> list[str]:
  """Appends the deterministic flags to XLA_FLAGS when asked; returns the flags it added.

  Raises:
    RuntimeError: the flags are missing and JAX's backends already exist (too late to add them).
  """
  environ = os.environ if environ is None else environ
  if not deterministic:
    return []
  current = environ.get('XLA_FLAGS', '').split()
  missing = [f for f in DETERMINISTIC_XLA_FLAGS if f not in current]
  if missing and _backends_initialized():
    raise RuntimeError(
        'config.deterministic needs XLA_FLAGS="' + ' '.join(DETERMINISTIC_XLA_FLAGS) + '" before '
        'JAX initialises its backends: start through `python -m agmr_jax.main` (which sets them) '
        'or export XLA_FLAGS in the environment')
  if missing:
    environ['XLA_FLAGS'] = ' '.join(current + missing)
  return missing


def _backends_initialized() -> bool:
  if 'jax' not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()
