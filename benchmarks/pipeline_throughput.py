r"""Can the input pipeline feed an accelerator? Host supply beside device demand, in one run.

  python -m benchmarks.pipeline_throughput [--batches 30] [--workers 0,2] [--step_batch 2]
      [--step_repeats 3] [--codecs none,zstd] [--out FILE.md]

Uses synthetic ATLAS-like subjects built with the AGMR 2.5D recipe (192x192x4 float16 records),
writing them first if needed (once per codec). Tables, printed once at the end (progress goes
to stderr):

1. Loader: batches of 16 slices through the Grain training chain for every preset of
   AUGMENT_PRESETS, with the augmentation on the host (config.data.augment_on='host': read,
   decode, float32, augment, stack) and on the device (the host only reads the batch's records
   and decodes them into the float16 batch: input_pipeline/records.py), with 0 and 2 worker
   processes, warm-up batches excluded, the record files read once before (warm page cache).
   The presets read uncompressed records (the default codec); the first rows read zstd records
   (the former default) with the former chain (TFDS's generic decoder per record, Grain's
   shuffle and stack) and with today's, for comparison in the same run. Beside slices/s of wall
   time, slices/s per core: slices over the CPU time (user + system, every thread) of the main
   process and its Grain workers while the batches were made, i.e. what one busy core supplies.
   Then the records' size on disk per codec, and the CPU time per record of the read (per
   codec) and of the decode (TFDS's generic one against records.py's).
2. Device augmentation in a training step: AGMR-Net and U-Net at their paper input (192x192x4),
   the project's train step (Adam, float32) with and without the preset that costs most on the
   device ('thesis': flips, rotation, elastic, brightness, contrast), compiled once each and timed
   interleaved (plain, augmented, plain, ...) so the machine's load hits both alike; the ratios
   are the best augmented step over the best plain one and the median (and range) over the
   pairs of each augmented step over the plain step just before it. Beside it: the augmentation
   alone, jitted on the same batch (best of 5), per preset, as a share of the best plain step.
3. Demand: the slices/s an H100 at 35% of its dense bf16 peak consumes, from XLA's FLOP count of
   the training step (the throughput harness's convention, benchmarks/throughput_common.py), and
   the host cores that supply it at table 1's slices/s per core (each preset's best row; for
   the device, the slowest preset's).
Numbers on a shared machine are lower bounds; compare rows of one run only.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np
import psutil

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import throughput_common as common  # pylint: disable=wrong-import-position
from input_pipeline import augment  # pylint: disable=wrong-import-position
from input_pipeline import builder as builder_lib  # pylint: disable=wrong-import-position
from input_pipeline import datasets  # pylint: disable=wrong-import-position
from input_pipeline import pipeline  # pylint: disable=wrong-import-position
from input_pipeline import records as records_lib  # pylint: disable=wrong-import-position
from input_pipeline import recipes  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parent.parent
STEP_NETWORKS = ('agmr_net', 'unet')
STEP_PRESET = 'thesis'  # The dearest preset on the device (elastic field + one resample).
MFU = 0.35


def _progress(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


def _cpu_seconds(processes) -> float:
  """User + system CPU seconds of the processes so far (all their threads)."""
  total = 0.0
  for proc in processes:
    try:
      times = proc.cpu_times()
      total += times.user + times.system
    except psutil.Error:
      pass  # A worker that already exited: its time is lost (noted by a lower CPU count).
  return total


def former_chain(dataset, batch_size: int):
  """The training chain before issue 23's reader: TFDS's generic decoder per record (all seven
  features), the training fields kept, the batch stacked by Grain."""
  source = dataset.source(range(dataset.num_folds))
  keep = lambda r: {'image': r['image'], 'mask': r['mask']}
  return source.seed(0).shuffle()[0::1].repeat().map(keep).batch(batch_size, drop_remainder=True)


def loader_rate(dataset, preset: str, augment_on: str, workers: int, batches: int,
                batch_size: int = 16) -> tuple[float, float]:
  """(slices/s of wall time, slices per CPU-second of every process doing the work) of the
  training chain with the preset's host augmentation or none ('former': the former reader)."""
  if preset == 'former':
    ds = former_chain(dataset, batch_size)
  else:
    host = augment.host_augment(preset, augment_on)
    ds = pipeline.train_dataset(dataset.train_records(range(dataset.num_folds)),
                                batch_size=batch_size, seed=0, augment=host)
  it = pipeline.make_iterator(ds, worker_count=workers, worker_buffer_size=4)
  try:
    for _ in range(max(4, 2 * workers)):  # warm-up: worker start, first reads
      next(it)
    me = psutil.Process()
    processes = [me, *me.children(recursive=True)]
    cpu, start = _cpu_seconds(processes), time.perf_counter()
    for _ in range(batches):
      next(it)
    wall, cpu = time.perf_counter() - start, _cpu_seconds(processes) - cpu
    return batches * batch_size / wall, batches * batch_size / max(cpu, 1e-9)
  finally:
    if hasattr(it, 'close'):
      it.close()


def loader_table(built: dict, workers: list[int], batches: int) -> tuple[list[str], dict]:
  """Table 1 rows and {(preset, augment_on): best slices/s per core}. `built`: codec -> dataset;
  the presets read the default codec's records; the first two rows read zstd records with the
  former reader and with today's."""
  rows = ['| preset | augmentation on | records | workers | slices/s | slices/s per core (CPU '
          'time) |', '|---|---|---|---|---|---|']
  best = {}
  default = builder_lib.DEFAULT_CODEC
  runs = [('former', 'nothing', 'zstd'), ('none', 'device', 'zstd')] + [
      (preset, where, default) for preset in augment.AUGMENT_PRESETS
      for where in ('host', 'device')
      if not (preset == 'none' and where == 'host')]  # 'none' on the host: the device chain.
  for preset, where, codec in (r for r in runs if r[2] in built):
    for n in workers:
      rate, per_core = loader_rate(built[codec], preset, where, n, batches)
      if codec == default:
        best[(preset, where)] = max(best.get((preset, where), 0.0), per_core)
      label = ('nothing (former TFDS reader)' if preset == 'former'
               else 'nothing' if preset == 'none' else where)
      rows.append(f'| {preset} | {label} | {codec} | {n} | {rate:,.0f} | {per_core:,.0f} |')
      _progress(rows[-1])
  return rows, best


def warm_page_cache(built: dict) -> None:
  """Reads every record file once, so no row pays for the disk (training reads an epoch's files
  over and over: the page cache holds them after the first)."""
  for ds in built.values():
    for path in ds.path.glob('*.array_record-*'):
      with path.open('rb') as f:
        while f.read(1 << 24):
          pass


def _cpu_per_call(fn, calls: int, repeats: int = 5) -> float:
  """Microseconds of process CPU time per call of fn (best of the repeats)."""
  best = float('inf')
  for _ in range(repeats):
    start = time.process_time()
    for i in range(calls):
      fn(i)
    best = min(best, (time.process_time() - start) / calls)
  return best * 1e6


def _fold0_records(ds) -> tuple[str, list[bytes], float]:
  """(path, records, CPU us per read) of fold 0's record file, read in file order."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  path = str(next(iter(sorted(ds.path.glob('*fold0.array_record-*')))))
  reader = array_record_module.ArrayRecordReader(path, records_lib.READER_OPTIONS)
  try:
    n = reader.num_records()
    per_read = _cpu_per_call(lambda i: reader.read([i % n]), n)
    return path, [reader.read([i])[0] for i in range(n)], per_read
  finally:
    reader.close()


def record_costs(built: dict) -> list[str]:
  """Where a record's CPU time goes: the read per codec, TFDS's generic decode against the
  direct decode into a batch row (fold 0's records in file order, one thread)."""
  records_lib.keep_freed_memory()  # As training does (records.TrainRecords).
  read = {codec: _fold0_records(ds) for codec, ds in built.items()}
  rows = ['| per record (fold 0, one thread) | CPU us |', '|---|---|']
  rows += [f'| read, {codec} records | {per_read:.0f} |' for codec, (_, _, per_read) in read.items()]
  ds = built[builder_lib.DEFAULT_CODEC]
  path, raw, _ = read[builder_lib.DEFAULT_CODEC]
  features = ds.fold_source(0).dataset_info.features
  tfds_decode = _cpu_per_call(lambda i: features.deserialize_example_np(raw[i]), len(raw))
  train = ds.train_records([0])
  image = np.empty(train.image_shape, train.image_dtype)
  mask = np.empty(train.mask_shape, np.uint8)
  shard = records_lib.Shard(path, 0, len(raw))
  decode = train._decode  # pylint: disable=protected-access
  direct = _cpu_per_call(lambda i: decode(raw[i], image, mask, shard, i), len(raw))
  return rows + [f'| decode, TFDS generic (all seven features) | {tfds_decode:.0f} |',
                 f'| decode, image and mask into a batch row (records.py) | {direct:.0f} |']


def disk_line(built: dict) -> str:
  """The records' size per codec."""
  size = {c: sum(f.stat().st_size for f in ds.path.glob('*.array_record-*')) / 2**20
          for c, ds in built.items()}
  slices = len(next(iter(built.values())).records(range(next(iter(built.values())).num_folds)))
  return ('Records on disk: ' + ', '.join(f'{c} {mb:,.1f} MiB' for c, mb in size.items())
          + f' ({slices} slices).')


def _timed(fn, *args) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def step_costs(name: str, batch_size: int, repeats: int) -> dict:
  """Plain and device-augmented train steps of one network, timed interleaved."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from agmr_jax import objectives  # pylint: disable=g-import-not-at-top
  from agmr_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from agmr_jax.models import MODELS  # pylint: disable=g-import-not-at-top
  from agmr_jax.training import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  from input_pipeline.augment.device import DeviceAugment  # pylint: disable=g-import-not-at-top
  spec = common.NETWORKS[name]
  model = MODELS[name](**spec.model_kwargs)
  variables = jax.device_put(common.synthetic_variables(model, (1, *spec.input_shape)))
  batch = jax.device_put(common.make_batch(spec, batch_size))
  objective = objectives.make_objective(spec.objective, **spec.objective_kwargs)
  state = state_lib.TrainState.create(variables=variables, tx=optax.adam(1e-3))
  rng = jax.random.key(0)
  aug = DeviceAugment.from_config(augment.AUGMENT_PRESETS[STEP_PRESET], seed=0)
  compiled, flops = {}, None
  for label, device_aug in (('plain', None), ('augmented', aug)):
    lowered = jax.jit(train_step_lib.make_train_step(model, objective, augment=device_aug)).lower(
        state, batch, rng)
    if label == 'plain':
      cost = lowered.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops = float(cost['flops'])
    compiled[label] = lowered.compile()
    _timed(compiled[label], state, batch, rng)  # warm-up
  times = {label: [] for label in compiled}
  for _ in range(repeats):
    for label, fn in compiled.items():
      times[label].append(_timed(fn, state, batch, rng))
  # Best of the repeats, as timeit does: on a shared machine other processes only slow a step.
  plain, augmented = min(times['plain']), min(times['augmented'])
  # Each augmented step over the plain step timed just before it: load that drifts over minutes
  # hits both sides of a pair alike.
  pairs = sorted(a / p for p, a in zip(times['plain'], times['augmented']))
  alone = {}
  for preset, config in augment.AUGMENT_PRESETS.items():
    if config and (preset != 'mdanet_rot90' or spec.input_shape[0] == spec.input_shape[1]):
      fn = jax.jit(DeviceAugment.from_config(config, seed=0).__call__)
      _timed(fn, batch, 0)
      alone[preset] = min(_timed(fn, batch, 0) for _ in range(5))
  _progress(f'{name}: plain {plain:.2f} s, augmented {augmented:.2f} s, alone {alone}')
  return {'plain': plain, 'augmented': augmented, 'alone': alone, 'pairs': pairs,
          'flops_per_slice': flops / batch_size}


def step_table(costs: dict, batch_size: int) -> list[str]:
  presets = list(next(iter(costs.values()))['alone'])
  rows = [f'| network (192x192x4, batch {batch_size}) | train step s (best) | with '
          f'{STEP_PRESET} on the device s (best) | added, best over best | added, median of '
          'pairs (range) | '
          + ' | '.join(f'{p} alone, share of step' for p in presets) + ' |',
          '|---|---|---|---|---|' + '---|' * len(presets)]
  for name, c in costs.items():
    alone = ' | '.join(f'{1e3 * c["alone"][p]:.1f} ms, {c["alone"][p] / c["plain"]:.2%}'
                       for p in presets)
    pairs = c['pairs']
    rows.append(f'| {name} | {c["plain"]:.2f} | {c["augmented"]:.2f} | '
                f'{c["augmented"] / c["plain"] - 1:+.1%} | {statistics.median(pairs) - 1:+.1%} '
                f'({pairs[0] - 1:+.1%} to {pairs[-1] - 1:+.1%}, {len(pairs)} pairs) | {alone} |')
  return rows


def demand_table(costs: dict, best: dict) -> list[str]:
  peak = common.PEAK_FLOPS['H100 SXM']['bf16']
  device_rate = min(r for (p, where), r in best.items() if where == 'device')
  host_presets = [p for (p, where) in best if where == 'host']
  rows = ['| network | train step GFLOP/slice | H100 at 35% bf16 MFU, slices/s | host cores, '
          'augmentation on the device | ' + ' | '.join(f'host cores, {p} on the host'
                                                       for p in host_presets) + ' |',
          '|---|---|---|---|' + '---|' * len(host_presets)]
  for name, c in costs.items():
    demand = MFU * peak / c['flops_per_slice']
    hosts = ' | '.join(f'{demand / best[(p, "host")]:.1f}' for p in host_presets)
    rows.append(f'| {name} | {c["flops_per_slice"] / 1e9:.1f} | {demand:,.0f} | '
                f'{demand / device_rate:.1f} | {hosts} |')
  return rows


def _commit() -> str:
  try:
    head = subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', str(REPO), 'status', '--porcelain',
                            '--untracked-files=no'], capture_output=True, text=True,
                           check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  return head + ('+dirty' if dirty else '')


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default='/tmp/agmr_bench_data')
  parser.add_argument('--dataset', default='synthetic_atlas',
                      help='a synthetic dataset (the tests use synthetic_tiny)')
  parser.add_argument('--recipe', default='agmr_2p5d', choices=sorted(recipes.RECIPES))
  parser.add_argument('--num_subjects', type=int, default=5)
  parser.add_argument('--batches', type=int, default=30)
  parser.add_argument('--workers', default='0,2')
  parser.add_argument('--step_batch', type=int, default=2)
  parser.add_argument('--step_repeats', type=int, default=3)
  parser.add_argument('--networks', default=','.join(STEP_NETWORKS))
  parser.add_argument('--codecs', default=','.join(builder_lib.CODECS),
                      help='record codecs to build and read (the presets read the default one, '
                      f'{builder_lib.DEFAULT_CODEC!r}; zstd adds the former-reader rows)')
  parser.add_argument('--out', default='', help='also write the tables to this markdown file')
  args = parser.parse_args(argv)
  if args.batches < 1 or args.num_subjects < 5 or args.step_repeats < 1:
    parser.error('--batches and --step_repeats take a positive number, --num_subjects at least 5 '
                 '(one per fold)')
  codecs = [c for c in args.codecs.split(',') if c]
  if set(codecs) - set(builder_lib.CODECS) or builder_lib.DEFAULT_CODEC not in codecs:
    parser.error(f'--codecs takes codecs of {sorted(builder_lib.CODECS)}, including '
                 f'{builder_lib.DEFAULT_CODEC!r}')
  flags.FLAGS(sys.argv[:1])  # grain's worker processes read absl flags; argparse owns the CLI
  logging.set_verbosity(logging.WARNING)
  built = {codec: pipeline.SliceDataset(datasets.prepare(
      args.dataset, recipes.RECIPES[args.recipe], data_dir=pathlib.Path(args.data_dir) / codec,
      num_subjects=args.num_subjects, codec=codec)) for codec in codecs}
  h, w = recipes.RECIPES[args.recipe].size
  channels = built[builder_lib.DEFAULT_CODEC].train_records([0]).image_shape[-1]
  warm_page_cache(built)
  loader_rows, best = loader_table(built, [int(w) for w in args.workers.split(',')], args.batches)
  costs = {name: step_costs(name, args.step_batch, args.step_repeats)
           for name in args.networks.split(',') if name}
  tables = [*loader_rows, '', disk_line(built), '', *record_costs(built)]
  if costs:
    tables += ['', *step_table(costs, args.step_batch), '', *demand_table(costs, best)]
  text = '\n'.join([
      f'commit {_commit()}; {common.cpu_name()}; {args.dataset} {h}x{w}x{channels} records, '
      f'loader batch 16; `python -m benchmarks.pipeline_throughput '
      f'{" ".join(sys.argv[1:] if argv is None else argv)}`'.rstrip(),
      '', *tables])
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
