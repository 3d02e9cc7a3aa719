"""Single-core throughput of input_pipeline.augment on 192x192x4 slices.

Each iteration copies a source slice (as a record read would produce fresh arrays), augments it
and stacks batches of 16, so allocation costs of a real Grain worker are included. Prints a
markdown table: op set -> slices/s.

  .venv/bin/python benchmarks/augment_speed.py [--seconds 2]

Page faults on fresh slice-sized arrays are expensive on some machines (the sandboxed CI ones);
compare with MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456 in the environment,
which keeps freed arrays in the heap for reuse.
"""

import argparse
import os
import sys
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')  # one core: no BLAS threads (elastic's upsample)

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from input_pipeline.augment import Augment  # pylint: disable=wrong-import-position

FLIPS_ROT_SCALE = {'flip_h': 0.5, 'flip_v': 0.5, 'rotate': {'p': 0.5, 'degrees': 15.0},
                   'scale': {'p': 0.5, 'range': (0.8, 1.2)}}
CASES = {
    'nothing (copy + batch only)': {},
    'flips p=0.5': {'flip_h': 0.5, 'flip_v': 0.5},
    'flips+rotate+scale p=0.5': FLIPS_ROT_SCALE,
    'flips+rotate+scale p=1': {'flip_h': 1, 'flip_v': 1, 'rotate': {'p': 1, 'degrees': 15.0},
                               'scale': {'p': 1, 'range': (0.8, 1.2)}},
    'flips+rotate+scale p=1, linear mask': {
        'flip_h': 1, 'flip_v': 1, 'rotate': {'p': 1, 'degrees': 15.0},
        'scale': {'p': 1, 'range': (0.8, 1.2)}, 'mask_mode': 'linear'},
    'rot90 p=1': {'rot90': 1.0},
    'brightness+contrast p=1': {'brightness': 1.0, 'contrast': 1.0},
    'elastic p=1': {'elastic': {'p': 1, 'alpha': 3.0, 'sigma': 12.0}},
    'mdanet preset (p=0.5)': {'flip_h': 0.5, 'flip_v': 0.5, 'rotate': {'p': 0.5, 'degrees': 90.0},
                              'scale': {'p': 0.5, 'range': (0.8, 1.2)}},
}


def _sources(n: int = 8) -> list[dict]:
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    yy, xx = np.mgrid[:192, :192]
    mask = ((yy - 96) ** 2 + (xx - 80) ** 2 < rng.integers(100, 900)).astype(np.uint8)
    out.append({'image': rng.standard_normal((192, 192, 4)).astype(np.float32), 'mask': mask})
  return out


def measure(config: dict, seconds: float, windows: int = 5) -> tuple[float, float]:
  """(slices per wall second, slices per CPU second) of this thread, best of short windows.

  The best window, as timeit does, because the machine is shared and other processes only ever
  slow a window down; CPU time (user + system of this process) is less sensitive to them.
  """
  augment, sources = Augment.from_config(config), _sources()
  rng = np.random.default_rng(1)
  rates = [_window(augment, sources, rng, seconds / windows) for _ in range(windows)]
  return max(r[0] for r in rates), max(r[1] for r in rates)


def _window(augment, sources, rng, seconds: float, batch: int = 16) -> tuple[float, float]:
  done, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while True:
    images, masks = [], []
    for i in range(batch):
      src = sources[(done + i) % len(sources)]
      out = augment({'image': src['image'].copy(), 'mask': src['mask'].copy()}, rng)
      images.append(out['image'])
      masks.append(out['mask'])
    np.stack(images), np.stack(masks)
    done += batch
    elapsed = time.perf_counter() - start
    if elapsed > seconds:
      return done / elapsed, done / max(time.process_time() - cpu_start, 1e-9)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--seconds', type=float, default=2.0)
  args = parser.parse_args()
  print('| op set (192x192x4 slices, batches of 16) | slices / wall s | slices / CPU s |')
  print('|---|---|---|')
  for name, config in CASES.items():
    wall, cpu = measure(config, args.seconds)
    print(f'| {name} | {wall:,.0f} | {cpu:,.0f} |', flush=True)


if __name__ == '__main__':
  main()
