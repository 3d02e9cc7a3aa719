"""gpu_check stage (d): the loader's host supply next to the GPU's consumption per network.

Supply: benchmarks/pipeline_throughput.py, run as a subprocess through its command line (spelled in
`loader_command` only, so a change of its flags is one edit here) and read from its markdown rows
`| loader, <augmentation> | <workers> | <slices/s> | <slices/s per core> |`. Consumption: the
JAX bf16 (and fp32) training rows of stage (a), in images/s at the table's batch size. Cores per
GPU = consumption / the per-core supply of the loader with the most workers (the scaling regime;
one worker process per core). The loader's records are AGMR's 192x192x4 float16 slices; networks
with other inputs (CLCI 224x176x1, MDANet 128x128x4, cross-attention U-Net 224x224x5) are compared
against the same rate, an approximation the summary says.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

WANTED = {  # flag -> (GPU value, dry-run value); flags the script's --help lacks are left out.
    '--num_subjects': ('5', '5'),
    '--batches': ('20', '2'),
    '--workers': ('0,8', '0'),  # Every preset twice, host and device: 18 rows within the cap.
    '--networks': ('agmr_net,unet', 'unet'),  # its device-augmentation step table
    '--step_batch': ('16', '1'),
    '--step_repeats': ('3', '1'),
    '--codecs': ('none', 'none'),  # The supply of today's records; zstd is a CPU-side question.
}


def loader_command(python: str, data_dir: pathlib.Path, dry_run: bool, env: dict) -> list[str]:
  """The one place that knows benchmarks/pipeline_throughput.py's flags (it is being changed).

  Asks its --help which of WANTED it takes today, so a renamed or dropped flag costs a row of
  this table, not the stage.
  """
  cmd = [python, '-m', 'benchmarks.pipeline_throughput', '--data_dir', str(data_dir)]
  helptext = subprocess.run(cmd[:3] + ['--help'], capture_output=True, text=True, env=env,
                            check=False).stdout
  for flag, values in WANTED.items():
    if re.search(re.escape(flag) + r'\b', helptext):
      cmd += [flag, values[1] if dry_run else values[0]]
  return cmd


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip('|').split('|')]


# Its loader table's header today: progress rows (stderr, all a timed-out run leaves) come without.
DEFAULT_HEADER = ['preset', 'augmentation on', 'records', 'workers', 'slices/s',
                  'slices/s per core (CPU time)']


def parse_rows(text: str) -> list[dict]:
  """Loader rows of any markdown table whose header has 'workers' and 'per core' columns.

  The columns before 'workers' name the setting (augmentation, where it runs); numbers may carry
  thousands separators. Rows printed twice (progress, then the final table) are kept once.
  """
  rows, header = {}, DEFAULT_HEADER
  for line in text.splitlines():
    cells = _cells(line)
    if not line.strip().startswith('|') or set(line.strip()) <= set('|-: '):
      continue
    if 'workers' in cells and any('per core' in c for c in cells):
      header = cells
      continue
    if len(cells) != len(header):
      continue
    w = header.index('workers')
    per_core = next(i for i, c in enumerate(header) if 'per core' in c)
    try:
      workers, rate = int(cells[w]), float(cells[w + 1].replace(',', '').split()[0])
      core = float(cells[per_core].replace(',', '').split()[0])
    except (ValueError, IndexError):
      continue
    setting = ', '.join(c for c in cells[:w] if c)
    rows[(setting, workers)] = {'augmentation': setting, 'workers': workers,
                                'slices_per_s': rate, 'per_core': core}
  return list(rows.values())


def _run(cmd: list[str], env: dict, cwd, budget_s: float, settle_s: float | None):
  """(stdout, stderr, exit) of the benchmark, stopped at `budget_s`, or, with `settle_s`, once its
  loader rows have stopped coming for that long (the dry run: its later tables time paper-size
  networks, minutes on a CPU)."""
  with open(os.devnull, 'rb') as null, _temp() as out, _temp() as err:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=null, stdout=out, stderr=err,
                            start_new_session=True)  # Its Grain workers go with it (killpg).
    deadline, seen, last_new = time.monotonic() + budget_s, 0, time.monotonic()
    while proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.5)
      rows = len(parse_rows(pathlib.Path(err.name).read_text(errors='replace')))
      if rows > seen:
        seen, last_new = rows, time.monotonic()
      if settle_s and seen and time.monotonic() - last_new > settle_s:
        break
    code = proc.poll()
    if code is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      code = 'stopped after the loader rows' if settle_s and seen else 'timeout (later tables cut)'
    return (pathlib.Path(out.name).read_text(errors='replace'),
            pathlib.Path(err.name).read_text(errors='replace'), code)


def _temp():
  return tempfile.NamedTemporaryFile('w+', suffix='.log')


def run(ctx, budget_s: float) -> dict:
  cmd = loader_command(sys.executable, ctx.work_dir / 'loader_data', ctx.dry_run, ctx.env())
  start = time.monotonic()
  out, err, code = _run(cmd, ctx.env(), ctx.repo, budget_s, 5 if ctx.dry_run else None)
  ctx.append_log('loader', ' '.join(cmd) + '\n' + out + '\n' + err[-3000:])
  rows = parse_rows(out) or parse_rows(err)  # Progress rows go to stderr; a stopped run has those.
  record = {'status': 'ok' if rows else 'error', 'command': ' '.join(cmd[2:]),
            'exit': code, 'rows': rows, 'seconds': round(time.monotonic() - start, 1),
            'host_cpus': _cpus(), 'tables': out[-6000:]}
  if record['status'] != 'ok':
    record['error'] = (err or out)[-1500:]
  return record


def _cpus() -> int:
  return len(os.sched_getaffinity(0))


def supply_per_core(rows: list[dict]) -> dict[str, float]:
  """augmentation -> per-core slices/s of its row with the most workers."""
  best = {}
  for r in rows:
    if r['augmentation'] not in best or r['workers'] > best[r['augmentation']]['workers']:
      best[r['augmentation']] = r
  return {aug: r['per_core'] for aug, r in best.items()}


def consumption(throughput_file: str | None) -> dict[tuple[str, str], float]:
  """(network, precision) -> JAX training images/s, from stage (a)'s results."""
  if not throughput_file or not pathlib.Path(throughput_file).exists():
    return {}
  runs = json.loads(pathlib.Path(throughput_file).read_text())['runs']
  return {(r['network'], r['precision']): r['images_per_s'] for r in runs
          if r.get('status') == 'ok' and r['framework'] == 'jax' and r['mode'] == 'train'}


def summary_lines(record: dict, throughput_file: str | None) -> list[str]:
  lines = [f"Supply: `python -m {record.get('command', '')}` on {record.get('host_cpus')} host "
           'CPUs (status ' + str(record.get('status')) + ').', '',
           '| augmentation | workers | slices/s | slices/s per core |', '|---|---|---|---|']
  lines += [f"| {r['augmentation']} | {r['workers']} | {r['slices_per_s']:.0f} | "
            f"{r['per_core']:.0f} |" for r in record.get('rows', [])]
  per_core, used = supply_per_core(record.get('rows', [])), consumption(throughput_file)
  if not per_core or not used:
    return lines + ['', 'Cores per GPU: needs both the loader rows and the JAX training rows.']
  augs = list(per_core)
  lines += ['', 'Cores per GPU = GPU images/s (JAX train step) / per-core supply (loader with '
            'the most workers); inputs other than 192x192x4 are approximated by that rate.', '',
            '| network | precision | GPU images/s | ' + ' | '.join(f'cores: {a}' for a in augs)
            + ' |', '|---|---|---|' + '---|' * len(augs)]
  for (network, precision), rate in sorted(used.items()):
    cores = ' | '.join(f'{rate / per_core[a]:.1f}' if per_core[a] else '-' for a in augs)
    lines.append(f'| {network} | {precision} | {rate:.0f} | {cores} |')
  return lines
