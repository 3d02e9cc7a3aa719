"""Results of benchmarks/throughput.py: JSON record and the markdown tables.

Ratio convention: "JAX / torch" = JAX images/s divided by PyTorch images/s of
the same row (= torch ms/step / JAX ms/step); above 1 means JAX is faster.
"""

import json
import pathlib
import re

from benchmarks import throughput_common as common

ROW_KEYS = ('network', 'precision', 'batch', 'mode')
VARIANTS = ('jax', 'torch_eager', 'torch_compile')


def _ok(r: dict) -> bool:
  return r.get('status') == 'ok'


def one_line(r: dict) -> str:
  head = f"{r['network']:>16} {r['precision']} b{r['batch']:<3} {r['mode']:<5} {r['framework']:<13}"
  if not _ok(r):
    return f'{head} ERROR {r.get("error", "")[:200]}'
  return f"{head} {r['step_ms']:10.2f} ms/step {r['images_per_s']:9.2f} img/s"


def profile_lines(r: dict) -> list[str]:
  """The traced JAX step's costliest ops (throughput_jax.profile_steps), one line each."""
  prof = r.get('profile') if _ok(r) else None
  if not prof:
    return []
  kinds = ', '.join(f'{k} {v:.0f}' for k, v in prof.get('ms_per_step_by_kind', {}).items())
  lines = [f"  profile: {prof['trace']}",
           f"  XLA op time {prof['op_ms_per_step']:.0f} ms/step over {prof['steps']} steps "
           f"(summed over threads); by kind, ms/step: {kinds}; top ops by self time:"]
  lines += [f"  {o['self_ms_per_step']:9.1f} ms {100 * (o['share'] or 0):5.1f}% "
            f"x{o['calls_per_step']:g} {o['op']}: {o['hlo']}" for o in prof['top_ops']]
  return lines


def mfu(record: dict, flops: float | None) -> float | None:
  """Model FLOP utilisation: flops / step time / device peak at the run's precision."""
  if not _ok(record) or not flops:
    return None
  peak, _ = common.peak_flops(record.get('device', ''), record['precision'])
  return None if peak is None else flops / (record['step_ms'] / 1e3) / peak


def _rows(runs: list[dict]) -> dict[tuple, dict[str, dict]]:
  rows: dict[tuple, dict[str, dict]] = {}
  for r in runs:
    rows.setdefault(tuple(r[k] for k in ROW_KEYS), {})[r['framework']] = r
  return rows


def _fmt(x, spec: str, none: str = '-') -> str:
  return none if x is None else format(x, spec)


def _ratio(jax_run, torch_run) -> str:
  if not (jax_run and torch_run and _ok(jax_run) and _ok(torch_run)):
    return '-'
  return f"{torch_run['step_ms'] / jax_run['step_ms']:.2f}"


def _get(run, key):
  return run.get(key) if run and _ok(run) else None


def _mib(b) -> str:
  return '-' if b is None else f'{b / 2**20:.0f}'


def _ms(run) -> str:
  """Median ms/step with the range of the timed runs: '123.4 (120.1-130.2)'."""
  med, runs = _get(run, 'step_ms'), _get(run, 'step_ms_runs')
  if med is None:
    return '-'
  return f'{med:.1f} ({min(runs):.1f}-{max(runs):.1f})' if runs and len(runs) > 1 else f'{med:.1f}'


def _commits(runs) -> str:
  return ', '.join(sorted({r.get('commit', '?') for r in runs.values()}))


def _main_table(rows) -> list[str]:
  lines = ['| network | prec | batch | mode | JAX ms | eager ms | compile ms | JAX img/s '
           '| JAX/eager | JAX/compile | GFLOP/step | MFU JAX | MFU eager | MFU compile '
           '| commit |',
           '|' + '---|' * 15]
  for key, runs in rows.items():
    j, e, c = (runs.get(v) for v in VARIANTS)
    flops = _get(j, 'flops_per_step')
    mfus = [_fmt(mfu(r, flops) if r else None, '.1%') for r in (j, e, c)]
    lines.append(
        f"| {' | '.join(str(k) for k in key)} | {_ms(j)} | {_ms(e)} | {_ms(c)} "
        f"| {_fmt(_get(j, 'images_per_s'), '.1f')} | {_ratio(j, e)} | {_ratio(j, c)} "
        f"| {_fmt(flops / 1e9 if flops else None, '.1f')} | {' | '.join(mfus)} "
        f"| {_commits(runs)} |")
  return lines


MEMORY_LEGEND = (
    'Memory, MiB. "peak" (JAX, eager, compile) is measured the same way for both frameworks: '
    'on CPU, the process\'s peak resident set size (Linux VmHWM) with the high-water mark reset '
    'after compiling (JAX: after `lower().compile()`; PyTorch: after the first step, which for '
    'torch.compile compiles; both after glibc `malloc_trim` returns freed heap to the OS), minus '
    'the RSS before the model was built (frameworks imported); it counts weights, '
    'optimizer state, batch, activations and allocator caches (and for JAX the loaded '
    'executable), not compilation. On GPU: JAX device `peak_bytes_in_use` (since process '
    'start: includes autotuning scratch), PyTorch `torch.cuda.max_memory_allocated` reset after '
    'the first step. The exact method of each run is its `peak_memory_kind` in the JSON. '
    '"XLA" columns are XLA\'s own buffer assignment of the compiled JAX step '
    '(`compiled.memory_analysis()`): arguments (weights, optimizer state, batch), outputs, the '
    'part of the outputs aliased to donated arguments, and temporaries (activations kept for '
    'the backward pass and scratch); "XLA args + temps" is the step\'s device-resident need '
    'excluding the executable.')


def _memory_table(rows) -> list[str]:
  lines = ['| network | prec | batch | mode | peak JAX | peak eager | peak compile '
           '| XLA args | XLA outputs | XLA aliased | XLA temps | XLA args + temps |',
           '|' + '---|' * 12]
  for key, runs in rows.items():
    j, e, c = (runs.get(v) for v in VARIANTS)
    xla = _get(j, 'xla_memory_bytes') or {}
    cells = [_mib(_get(r, 'peak_memory_bytes')) for r in (j, e, c)]
    cells += [_mib(xla.get(k)) for k in ('argument', 'output', 'alias', 'temp')]
    both = (xla['argument'] + xla['temp']) if xla else None
    lines.append(f"| {' | '.join(str(k) for k in key)} | {' | '.join(cells)} | {_mib(both)} |")
  return lines


def _compile_table(rows) -> list[str]:
  lines = ['| network | prec | batch | mode | JAX compile s | eager first step s '
           '| torch.compile first step s | check JAX | check eager | check compile |',
           '|' + '---|' * 10]
  for key, runs in rows.items():
    j, e, c = (runs.get(v) for v in VARIANTS)
    checks = ' | '.join(_fmt(_get(r, 'check'), '.5g') for r in (j, e, c))
    lines.append(f"| {' | '.join(str(k) for k in key)} | {_fmt(_get(j, 'compile_s'), '.1f')} "
                 f"| {_fmt(_get(e, 'first_step_s'), '.1f')} "
                 f"| {_fmt(_get(c, 'first_step_s'), '.1f')} | {checks} |")
  return lines


def _environment(runs: list[dict]) -> list[str]:
  lines = []
  for framework in VARIANTS:
    r = next((r for r in runs if r['framework'] == framework and _ok(r)), None)
    if r:
      extra = f", threads {r['threads']}" if 'threads' in r else ''
      lines.append(f"- {framework}: device `{r['device']}` ({r['platform']}), "
                   f"versions {json.dumps(r['versions'])}{extra}")
  return lines


def markdown(results: dict) -> str:
  meta, runs = results['meta'], results['runs']
  cpu_only = all(r.get('platform') in (None, 'cpu') for r in runs)
  title = '# XLA vs PyTorch throughput'
  lines = [title, '']
  devices = ', '.join(sorted({f"`{r['device']}`" for r in runs if _ok(r)})) or 'unknown'
  if meta['smoke']:
    lines += [f'**CPU SMOKE TEST on {devices}: checks that the harness runs end to end. Not '
              'a performance claim** (tiny batches, a few timed steps, a shared CPU; XLA:CPU '
              'convolutions are known to be slower than oneDNN).', '']
  elif cpu_only:
    lines += [f'**CPU measurement on {devices}**: XLA:CPU against PyTorch\'s CPU kernels '
              '(oneDNN); it says nothing about GPU throughput (docs/performance.md).', '']
  lines += [f"Date {meta['date']}; settings {json.dumps(meta['settings'])}; "
            f"label: {meta['label'] or '-'}; command: `{' '.join(meta['argv'])}`"]
  lines += [f"Continued {r['date']}: `{' '.join(r['argv'])}`" for r in meta.get('resumed', [])]
  lines += ['']
  lines += _environment(runs) + ['']
  lines += ['JAX/eager and JAX/compile: JAX images/s over PyTorch images/s in the same row '
            '(>1: JAX faster). ms = median ms/step. MFU = XLA FLOPs per step / step time / '
            'device peak (bf16 dense, or TF32 for fp32; none known for CPUs). '
            f"FLOPs: {meta['flop_convention']} ms cells: median (fastest-slowest of the timed "
            'runs). commit: the git commit each run was measured at (+dirty: tracked files '
            'differed from it).', '']
  rows = _rows(runs)
  lines += _main_table(rows) + ['', '## Memory', '', MEMORY_LEGEND, '']
  lines += _memory_table(rows) + ['', '## Compile / first step and cross-framework check', '',
                                'check: mean predicted probability (infer; same weights and '
                                'batch, should agree) or first training loss (train; dropout '
                                'masks differ between frameworks).', '']
  lines += _compile_table(rows)
  errors = [r for r in runs if not _ok(r)]
  if errors:
    lines += ['', '## Failed runs', '']
    lines += [f"- {r['network']} {r['precision']} b{r['batch']} {r['mode']} {r['framework']}: "
              f"{r.get('error', '')[:300]}" for r in errors]
  return '\n'.join(lines) + '\n'


def _device_tag(runs: list[dict]) -> str:
  name = next((r['device'] for r in runs if _ok(r) and r['framework'] == 'jax'),
              next((r['device'] for r in runs if _ok(r)), 'unknown'))
  if all(r.get('platform') in (None, 'cpu') for r in runs):
    return 'cpu'
  return re.sub(r'[^a-z0-9]+', '-', name.lower().replace('nvidia', '')).strip('-')


def write(results: dict, out_dir: pathlib.Path, started, *, smoke: bool,
          previous: pathlib.Path | None = None) -> pathlib.Path:
  """Writes <stem>.json and <stem>.md; returns the stem (kept once chosen)."""
  stem = previous
  if stem is None:
    suffix = '-smoke' if smoke else ''
    stem = out_dir / f"throughput-{_device_tag(results['runs'])}-{started:%Y%m%d-%H%M}{suffix}"
  out_dir.mkdir(parents=True, exist_ok=True)
  stem.with_suffix('.json').write_text(json.dumps(results, indent=1) + '\n')
  stem.with_suffix('.md').write_text(markdown(results))
  return stem
