r"""Seconds to predict one ATLAS-sized volume (197x233x189) end to end, as agmr_jax.predict does.

  python -m benchmarks.predict_speed [--model dunet] [--recipe agmr_2p5d] [--batch_size 16] \
      [--repeats 2] [--tta] [--model_kwargs '{"features": [8, 16, 32, 64, 128]}'] [--size 64,64]
  python -m benchmarks.predict_speed --tta_settings none,lr,lr+ap ...   (side by side, one run)

The network is built at the paper's size (D-UNet: 192x192x4 input, full widths, 8.64 M
parameters) with random weights: speed does not depend on the values. One volume is predicted
once to compile, then `--repeats` more times; each pass is the whole path of predict.py minus the
file I/O: recipe forward (z-score, crop 180x180, resize to 192, 4 neighbour slices, float16
storage rounding), the model over all 189 slices in batches on every local device, the inverse
(resize back, un-crop, transpose) and the 0.5 threshold. Prints the stage times and one JSON line;
with --tta_settings, one row per test-time-augmentation setting and its time relative to none.
"""

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from agmr_jax import sharding as sharding_lib
from agmr_jax.inference import predict
from agmr_jax.inference import predictor as inference
from agmr_jax.models import MODELS
from input_pipeline import recipes

ATLAS_SHAPE = (197, 233, 189)


def synthetic_volume(shape=ATLAS_SHAPE, seed: int = 0) -> np.ndarray:
  """(1, X, Y, Z) float32: a noisy bright ellipsoid 'head', zeros outside (skull-stripped T1)."""
  rng = np.random.default_rng(seed)
  grids = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing='ij')
  head = sum(g ** 2 for g in grids) < 0.8
  volume = np.where(head, 80.0 + 10.0 * rng.standard_normal(shape, dtype=np.float32), 0.0)
  return volume.astype(np.float32)[None]


def timed_pass(predictor, variables, recipe, image) -> dict[str, float]:
  """One predict.predict_volume pass, split into its stages (wall seconds), plus CPU seconds.

  On a shared CPU machine the wall time depends on the other load; the process CPU time (all
  threads) says how much work one volume is.
  """
  c0, t0 = time.process_time(), time.perf_counter()
  stack = recipe.forward(image)
  slices = recipe.to_storage(stack.images).astype(np.float32)
  t1 = time.perf_counter()
  probs = predictor(variables, slices)
  t2 = time.perf_counter()
  mask = recipe.inverse(probs, stack.geometry) >= 0.5
  t3 = time.perf_counter()
  del mask
  return {'recipe_forward': t1 - t0, 'model': t2 - t1, 'inverse_threshold': t3 - t2,
          'total': t3 - t0, 'cpu': time.process_time() - c0}


def _measure(args, model, recipe, mesh, variables, tta) -> dict:
  batch = -(-args.batch_size // mesh.size) * mesh.size
  predictor = inference.Predictor(model, mesh, batch, tta=tta)
  image = synthetic_volume()
  # The same code path predict.py runs (compiles on this first call).
  t0 = time.perf_counter()
  predict.predict_volume(predictor, variables, recipe, image)
  first = time.perf_counter() - t0
  passes = [timed_pass(predictor, variables, recipe, image) for _ in range(args.repeats)]
  best = min(passes, key=lambda p: p['total'])
  device = jax.devices()[0]
  return {'model': args.model, 'recipe': recipe.name, 'size': recipe.size,
          'volume': ATLAS_SHAPE, 'slices': ATLAS_SHAPE[2], 'batch_size': batch,
          'tta': list(tta) if isinstance(tta, tuple) else tta,
          'devices': f'{mesh.size} x {device.platform} ({device.device_kind})',
          'first_call_s': round(first, 2), 'seconds_per_volume': round(best['total'], 2),
          'stages_s': {k: round(v, 3) for k, v in best.items()},
          'all_passes_s': [round(p['total'], 2) for p in passes]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='dunet')
  parser.add_argument('--model_kwargs', default='{}', help='JSON fields of the network')
  parser.add_argument('--recipe', default='agmr_2p5d')
  parser.add_argument('--size', default='', help='H,W replacing the recipe\'s output size')
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--tta', action='store_true')
  parser.add_argument('--tta_settings', default='',
                      help='compare settings side by side, e.g. none,lr,lr+ap')
  args = parser.parse_args()

  recipe = recipes.RECIPES[args.recipe]
  if args.size:
    recipe = dataclasses.replace(recipe, size=tuple(int(s) for s in args.size.split(',')))
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in json.loads(args.model_kwargs).items()}
  model = MODELS[args.model](**kwargs, dtype=jnp.float32)
  mesh = sharding_lib.make_mesh()
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *recipe.slice_shape)), train=False))(
      jax.random.key(0))
  settings = ([tuple(a for a in s.split('+') if a != 'none') for s in args.tta_settings.split(',')]
              if args.tta_settings else [args.tta])
  results = [_measure(args, model, recipe, mesh, variables, tta) for tta in settings]
  for result in results:
    best = result['stages_s']
    print(f"{args.model} on {result['devices']}, tta {result['tta']}: {best['total']:.2f} s per "
          f"{ATLAS_SHAPE} volume (model {best['model']:.2f} s, recipe {best['recipe_forward']:.2f}"
          f" s, inverse {best['inverse_threshold']:.2f} s; {best['cpu']:.1f} CPU s; first call "
          f"with compilation {result['first_call_s']:.1f} s)")
    print(json.dumps(result))
  if len(results) > 1:
    base = results[0]['seconds_per_volume']
    print('| TTA flips | passes | s per volume | x first row |\n|---|---|---|---|')
    for result, tta in zip(results, settings):
      print(f"| {'+'.join(tta) if tta else 'none'} | {len(inference.tta_passes(tta))} | "
            f"{result['seconds_per_volume']:.2f} | {result['seconds_per_volume'] / base:.2f} |")


if __name__ == '__main__':
  main()
