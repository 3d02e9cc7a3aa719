"""JAX side of the throughput harness: one configuration per process.

Runs the project's own training step (agmr_jax.train_step.make_train_step with
the network's objective, Adam from optax, jit with the state donated) or its
predict step (make_predict_step), on one device, on a fixed synthetic batch.
Imports only what the GPU machines have (jax, flax, optax): agmr_jax.models,
agmr_jax.objectives, agmr_jax.train_step; not agmr_jax.optim, which imports
ml_collections (Adam is built directly: `optax.adam(1e-3)`, optim.py's 'adam'
with a constant schedule).
"""

import collections
import gzip
import json
import os
import pathlib
import platform
import re
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


def _peak_memory(device, rss_before: int, reset: bool) -> tuple[int | None, str]:
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:  # cannot be reset: includes autotuning scratch.
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use since process start'
  return common.host_peak(rss_before, reset, 'compiling')


def _xla_memory(compiled) -> dict | None:
  """XLA's buffer assignment of the compiled step: bytes of arguments, outputs, temporaries."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  fields = ('argument', 'output', 'alias', 'temp', 'generated_code')
  out = {f: int(getattr(stats, f'{f}_size_in_bytes', 0)) for f in fields}
  peak = getattr(stats, 'peak_memory_in_bytes', None)
  out['peak'] = int(peak) if peak else None
  return out


def train_runner(model, spec, variables, batch, seed):
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


_HLO_LINE = re.compile(r'^\s*(?P<root>ROOT\s+)?%?(?P<name>[^\s=]+) = (?P<rest>.*)$')
_HLO_COMPUTATION = re.compile(r'^%?(?P<name>[\w.\-]+) \(.*\{$')


def _describe(rest: str) -> tuple[str, str]:
  """(opcode, 'shape window op_name') of one HLO instruction's right-hand side."""
  opcode = re.search(r'\s([a-z][\w\-]*)\(', ' ' + rest)
  shape = rest.split(' ', 1)[0] if not rest.startswith('(') else 'tuple'
  window = re.search(r'window=\{([^}]*)\}', rest)
  op_name = re.search(r'op_name="([^"]*)"', rest)
  return (opcode[1] if opcode else '?', ' '.join(x for x in (
      re.sub(r'\{[^}]*\}', '', shape), f'window={{{window[1]}}}' if window else '',
      op_name[1] if op_name else '') if x))


def hlo_descriptions(hlo_text: str) -> dict[str, str]:
  """{instruction name: 'opcode shape window op_name'} from a compiled module's HLO text; a
  fusion also names its root ('fusion[convolution window={...}] ...'), e.g. a kernel gradient's
  image-sized window."""
  roots, computation = {}, None
  for line in hlo_text.splitlines():
    header = _HLO_COMPUTATION.match(line)
    if header:
      computation = header['name']
    m = _HLO_LINE.match(line)
    if m and m['root'] and computation:
      opcode, detail = _describe(m['rest'])
      window = re.search(r'window=\{[^}]*\}', detail)
      roots[computation] = opcode + (f' {window[0]}' if window else '')
  out = {}
  for line in hlo_text.splitlines():
    m = _HLO_LINE.match(line)
    if m:
      opcode, detail = _describe(m['rest'])
      calls = re.search(r'calls=%?([\w.\-]+)', m['rest'])
      if opcode == 'fusion' and calls and calls[1] in roots:
        opcode = f'fusion[{roots[calls[1]]}]'
      out[m['name']] = f'{opcode} {detail}'.strip()
  return out


def op_kind(description: str) -> str:
  """What an op of the training step does, from its hlo_descriptions() entry: 'forward conv',
  'input-gradient conv', 'kernel-gradient conv' (autodiff's, under transpose(jvp(...))),
  'layout copy' or 'other' (elementwise, reductions, BN, loss, optimizer)."""
  opcode = description.split(' ', 1)[0]
  if not re.search(r'convolution|dot', opcode):
    return 'layout copy' if re.search(r'copy|transpose', opcode) else 'other'
  if 'transpose(jvp(' not in description:
    return 'forward conv'
  window = re.search(r'window=\{size=(\d+)x(\d+)', description)
  shape = re.search(r' f32\[(\d+),(\d+),(\d+),\d+\]', description)
  if (window and int(window[1]) > 9) or (shape and shape[2] == shape[3] and int(shape[2]) <= 9):
    return 'kernel-gradient conv'  # an image-sized window, or a (C, k, k, C') result.
  return 'input-gradient conv'


def op_self_times(trace_events: list[dict]) -> dict[str, list[float]]:
  """{hlo_op: [self microseconds, count]}: each XLA op's duration minus its nested ops' (e.g.
  a while loop's body), per thread, from a Chrome/Perfetto trace's complete ('X') events."""
  by_thread = collections.defaultdict(list)
  for e in trace_events:
    if e.get('ph') == 'X' and 'hlo_op' in (e.get('args') or {}):
      by_thread[e.get('tid')].append(e)
  totals = collections.defaultdict(lambda: [0.0, 0])
  for events in by_thread.values():
    events.sort(key=lambda e: (e['ts'], -e['dur']))
    stack = []  # [end, op] of the enclosing ops.
    for e in events:
      while stack and stack[-1][0] <= e['ts']:
        stack.pop()
      if stack:
        totals[stack[-1][1]][0] -= e['dur']
      op = e['args']['hlo_op']
      totals[op][0] += e['dur']
      totals[op][1] += 1
      stack.append((e['ts'] + e['dur'], op))
  return dict(totals)


def profile_steps(step, compiled, cfg: dict, top: int = 10) -> dict:
  """Traces cfg['profile_steps'] (default 2) steps into cfg['profile_dir']/<run>/ (TensorBoard
  profile plus a Perfetto trace) and ranks the step's XLA ops by self time; also writes there
  every op's time (ops.json) and the compiled step's HLO (step.hlo.txt)."""
  import jax  # pylint: disable=g-import-not-at-top
  steps = int(cfg.get('profile_steps', 2))
  out_dir = pathlib.Path(cfg['profile_dir']).resolve() / (
      f"{cfg['network']}-{cfg['precision']}-b{cfg['batch']}-{cfg['mode']}")
  with jax.profiler.trace(str(out_dir), create_perfetto_trace=True):
    for _ in range(steps):
      jax.block_until_ready(step())
  trace = max(out_dir.rglob('perfetto_trace.json.gz'), key=lambda p: p.stat().st_mtime)
  with gzip.open(trace, 'rt') as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  totals = op_self_times(events)
  described = hlo_descriptions(compiled.as_text())
  op_us = sum(t for t, _ in totals.values())
  ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
  (out_dir / 'ops.json').write_text(json.dumps(  # every op, for a closer look.
      [{'op': op, 'self_ms_per_step': t / 1e3 / steps, 'calls_per_step': n / steps,
        'hlo': described.get(op, '')} for op, (t, n) in ranked], indent=0))
  (out_dir / 'step.hlo.txt').write_text(compiled.as_text())
  by_kind = collections.Counter()
  for op, (t, _) in ranked:
    by_kind[op_kind(described.get(op, ''))] += t / 1e3 / steps
  ranked = ranked[:top]
  return {'trace': str(trace), 'steps': steps, 'op_ms_per_step': op_us / 1e3 / steps,
          'ms_per_step_by_kind': dict(by_kind.most_common()),
          'top_ops': [{'op': op, 'self_ms_per_step': t / 1e3 / steps,
                       'share': t / op_us if op_us else None, 'calls_per_step': n / steps,
                       'hlo': described.get(op, '')[:240]}
                      for op, (t, n) in ranked]}


def _build(cfg: dict, spec):
  """(lowered, make_runner, check) of the configuration's jitted step."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from agmr_jax.models import MODELS  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if cfg['precision'] == 'bf16' else jnp.float32
  model = MODELS[cfg['network']](**spec.model_kwargs, dtype=dtype)
  variables = common.synthetic_variables(model, (1, *spec.input_shape), seed=cfg['seed'])
  batch = jax.device_put(common.make_batch(spec, cfg['batch'], seed=cfg['seed']))
  if cfg['mode'] == 'train':
    return train_runner(model, spec, variables, batch, cfg['seed'])
  return _infer_runner(model, variables, batch)


def run(cfg: dict) -> dict:
  """Times one (network, precision, batch, mode) configuration; returns a result record.

  Memory: the host peak is reset after compiling (so XLA's compilation memory is not counted),
  and XLA's own buffer assignment of the step (`memory_analysis()`) is reported beside it.
  With cfg['profile_dir'] (a folder) a train step is also traced and its costliest ops listed.
  """
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  spec = common.NETWORKS[cfg['network']]
  device = jax.devices()[0]
  rss_before = common.current_rss_bytes()
  lowered, make_runner, check = _build(cfg, spec)
  flops = _flops(lowered)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  reset = common.reset_peak_rss()
  step = make_runner(compiled)
  start = time.perf_counter()
  first = jax.block_until_ready(step())
  first_step_s = time.perf_counter() - start
  times = common.time_steps(step, jax.block_until_ready, warmup=cfg['warmup'],
                            repeats=cfg['repeats'], steps=cfg['steps'])
  peak, peak_kind = _peak_memory(device, rss_before, reset)
  profile = None
  if cfg.get('profile_dir') and cfg['mode'] == 'train':
    profile = profile_steps(step, compiled, cfg)
  return {
      **common.summarise(times, cfg['batch']), 'compile_s': compile_s,
      'first_step_s': first_step_s, 'flops_per_step': flops,
      'peak_memory_bytes': peak, 'peak_memory_kind': peak_kind,
      'xla_memory_bytes': _xla_memory(compiled), 'check': check(first),
      'device': (common.cpu_name() if device.platform == 'cpu'
                 else getattr(device, 'device_kind', str(device))),
      'platform': device.platform,
      'versions': {'jax': jax.__version__, 'flax': flax.__version__, 'optax': optax.__version__,
                   'python': platform.python_version()},
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'profile': profile,
  }
