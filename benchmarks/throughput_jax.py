"""JAX side of the throughput harness: one configuration per process.

Runs the project's own training step (agmr_jax.train_step.make_train_step with
the network's objective, Adam from optax, jit with the state donated) or its
predict step (make_predict_step), on one device, on a fixed synthetic batch.
Imports only what the GPU machines have (jax, flax, optax): agmr_jax.models,
agmr_jax.objectives, agmr_jax.train_step; not agmr_jax.optim, which imports
ml_collections (Adam is built directly: `optax.adam(1e-3)`, optim.py's 'adam'
with a constant schedule).
"""

import os
import platform
import time

from benchmarks import throughput_common as common


def _flops(lowered) -> float | None:
  """XLA's FLOP count of the unoptimised step (see throughput_common)."""
  try:
    cost = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per module.
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def _peak_memory(device, rss_before: int) -> tuple[int | None, str]:
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  return common.peak_rss_bytes() - rss_before, 'host peak RSS - RSS before model'


def _train_runner(model, spec, variables, batch, seed):
  """(lowered step, args, make_runner) for the donated training step."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from agmr_jax import objectives  # pylint: disable=g-import-not-at-top
  from agmr_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from agmr_jax.training import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  objective = objectives.make_objective(spec.objective, **spec.objective_kwargs)
  step = jax.jit(train_step_lib.make_train_step(model, objective), donate_argnums=0)
  state = state_lib.TrainState.create(variables=jax.device_put(variables), tx=optax.adam(1e-3))
  rng = jax.random.key(seed)
  lowered = step.lower(state, batch, rng)

  def make_runner(compiled):
    holder = {'state': state}

    def run():
      holder['state'], metrics = compiled(holder['state'], batch, rng)
      return holder['state'], metrics
    return run
  return lowered, make_runner, lambda out: float(out[1]['loss'])


def _infer_runner(model, variables, batch):
  import jax  # pylint: disable=g-import-not-at-top

  from agmr_jax.inference import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  variables = jax.device_put(variables)
  lowered = jax.jit(predictor_lib.make_predict_step(model)).lower(variables, batch['image'])
  return (lowered, lambda compiled: lambda: compiled(variables, batch['image']),
          lambda out: float(out.mean()))


def run(cfg: dict) -> dict:
  """Times one (network, precision, batch, mode) configuration; returns a result record."""
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from agmr_jax.models import MODELS  # pylint: disable=g-import-not-at-top
  spec = common.NETWORKS[cfg['network']]
  device = jax.devices()[0]
  rss_before = common.current_rss_bytes()
  dtype = jnp.bfloat16 if cfg['precision'] == 'bf16' else jnp.float32
  model = MODELS[cfg['network']](**spec.model_kwargs, dtype=dtype)
  variables = common.synthetic_variables(model, (1, *spec.input_shape), seed=cfg['seed'])
  batch = jax.device_put(common.make_batch(spec, cfg['batch'], seed=cfg['seed']))
  if cfg['mode'] == 'train':
    lowered, make_runner, check = _train_runner(model, spec, variables, batch, cfg['seed'])
  else:
    lowered, make_runner, check = _infer_runner(model, variables, batch)
  flops = _flops(lowered)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  step = make_runner(compiled)
  start = time.perf_counter()
  first = jax.block_until_ready(step())
  first_step_s = time.perf_counter() - start
  times = common.time_steps(step, jax.block_until_ready, warmup=cfg['warmup'],
                            repeats=cfg['repeats'], steps=cfg['steps'])
  peak, peak_kind = _peak_memory(device, rss_before)
  return {
      **common.summarise(times, cfg['batch']), 'compile_s': compile_s,
      'first_step_s': first_step_s, 'flops_per_step': flops,
      'peak_memory_bytes': peak, 'peak_memory_kind': peak_kind, 'check': check(first),
      'device': (common.cpu_name() if device.platform == 'cpu'
                 else getattr(device, 'device_kind', str(device))),
      'platform': device.platform,
      'versions': {'jax': jax.__version__, 'flax': flax.__version__, 'optax': optax.__version__,
                   'python': platform.python_version()},
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
