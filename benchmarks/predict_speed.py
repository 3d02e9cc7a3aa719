r"""Seconds to predict one ATLAS-sized volume (197x233x189) end to end, as agmr_jax.predict does.

  python -m benchmarks.predict_speed [--model dunet] [--recipe agmr_2p5d] [--batch_size 16] \
      [--repeats 2] [--tta] [--model_kwargs '{"features": [8, 16, 32, 64, 128]}'] [--size 64,64] \
      [--dtype bfloat16] [--volume 197,233,189]
  python -m benchmarks.predict_speed --tta_settings none,lr,lr+ap ...   (side by side, one run)

The network is built at the paper's size (D-UNet: 192x192x4 input, full widths, 8.64 M
parameters) with random weights: speed does not depend on the values. The synthetic volume has as
many modalities as the recipe reads (one T1 for the ATLAS recipes, five CT maps for thesis_ct),
the same head repeated. One volume is predicted once to compile, then `--repeats` more times; each
pass is the whole path of predict.py minus the file I/O: recipe forward (z-score, crop 180x180,
resize to 192, 4 neighbour slices, float16 storage rounding), the model over all slices in
batches on every local device, the inverse (resize back, un-crop, transpose) and the 0.5
threshold. `--dtype` is the network's compute dtype (parameters stay float32, as in training).
Prints the stage times and one JSON line; with --tta_settings, one row per test-time-augmentation
setting and its time relative to none.
"""

import argparse
import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from agmr_jax import sharding as sharding_lib
from agmr_jax.inference import loading
from agmr_jax.inference import predict
from agmr_jax.inference import predictor as inference
from agmr_jax.models import MODELS
from input_pipeline import recipes

ATLAS_SHAPE = (197, 233, 189)


DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def synthetic_volume(shape=ATLAS_SHAPE, seed: int = 0, modalities: int = 1) -> np.ndarray:
  """(modalities, X, Y, Z) float32: a noisy bright ellipsoid 'head', zeros outside (a
  skull-stripped scan), the same in every modality."""
  rng = np.random.default_rng(seed)
  grids = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing='ij')
  head = sum(g ** 2 for g in grids) < 0.8
  volume = np.where(head, 80.0 + 10.0 * rng.standard_normal(shape, dtype=np.float32), 0.0)
  return np.repeat(volume.astype(np.float32)[None], modalities, axis=0)


def modalities_of(recipe: recipes.Recipe) -> int:
  """How many modalities the recipe reads (1 when it takes whatever the case has)."""
  return len(recipe.modalities) if recipe.modalities is not None else 1


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


def measure(model, recipe, mesh, variables, *, batch_size: int, repeats: int, tta=False,
            volume=ATLAS_SHAPE, name: str = '') -> dict:
  """Times predict.predict_volume on a synthetic volume (the first, compiling pass apart)."""
  batch = -(-batch_size // mesh.size) * mesh.size
  predictor = inference.Predictor(model, mesh, batch, tta=tta)
  image = synthetic_volume(volume, modalities=modalities_of(recipe))
  # The same code path predict.py runs (compiles on this first call).
  t0 = time.perf_counter()
  predict.predict_volume(predictor, variables, recipe, image)
  first = time.perf_counter() - t0
  passes = [timed_pass(predictor, variables, recipe, image) for _ in range(repeats)]
  best = min(passes, key=lambda p: p['total'])
  device = jax.devices()[0]
  return {'model': name or type(model).__name__, 'recipe': recipe.name, 'size': recipe.size,
          'modalities': image.shape[0], 'dtype': jnp.dtype(model.dtype).name,
          'volume': tuple(volume), 'slices': volume[2], 'batch_size': batch,
          'tta': list(tta) if isinstance(tta, tuple) else tta,
          'devices': f'{mesh.size} x {device.platform} ({device.device_kind})',
          'first_call_s': round(first, 2), 'seconds_per_volume': round(best['total'], 3),
          'stages_s': {k: round(v, 3) for k, v in best.items()},
          'all_passes_s': [round(p['total'], 2) for p in passes]}


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='dunet', choices=sorted(MODELS))
  parser.add_argument('--model_kwargs', default='{}', help='JSON fields of the network')
  parser.add_argument('--recipe', default='agmr_2p5d', choices=sorted(recipes.RECIPES))
  parser.add_argument('--size', default='', help='H,W replacing the recipe\'s output size')
  parser.add_argument('--volume', default=','.join(map(str, ATLAS_SHAPE)),
                      help='X,Y,Z of the synthetic volume (ATLAS R1.2 by default)')
  parser.add_argument('--dtype', default='float32', choices=sorted(DTYPES),
                      help='the network\'s compute dtype')
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--tta', action='store_true')
  parser.add_argument('--tta_settings', default='',
                      help='compare settings side by side, e.g. none,lr,lr+ap')
  args = parser.parse_args(argv)
  try:
    args.size = tuple(int(s) for s in args.size.split(',')) if args.size else None
    args.volume = tuple(int(s) for s in args.volume.split(','))
    args.model_kwargs = {k: tuple(v) if isinstance(v, list) else v
                         for k, v in json.loads(args.model_kwargs).items()}
  except ValueError as e:
    parser.error(f'--size, --volume or --model_kwargs: {e}')
  args.settings = ([tuple(a for a in s.split('+') if a != 'none')
                    for s in args.tta_settings.split(',')] if args.tta_settings else [args.tta])
  unknown = {a for s in args.settings if isinstance(s, tuple) for a in s} - set(
      inference.FLIP_AXES)
  if unknown:
    parser.error(f'--tta_settings: unknown flips {sorted(unknown)}; known: none, '
                 f'{", ".join(inference.FLIP_AXES)}')
  if (args.size and len(args.size) != 2) or len(args.volume) != 3 or min(
      args.volume + (args.size or (1,)) + (args.batch_size, args.repeats)) < 1:
    parser.error('--size needs H,W and --volume X,Y,Z, all positive, and --batch_size and '
                 '--repeats must be positive')
  return args


def _build(args):
  """The recipe and the network at the recipe's input, with random float32 variables."""
  recipe = recipes.RECIPES[args.recipe]
  if args.size:
    recipe = dataclasses.replace(recipe, size=args.size)
  model = loading.network(args.model, args.model_kwargs, recipe, DTYPES[args.dtype])
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *recipe.slice_shape)), train=False))(
      jax.random.key(0))
  return recipe, model, variables


def _print(args, results, settings) -> None:
  for result in results:
    best = result['stages_s']
    print(f"{args.model} ({result['dtype']}) on {result['devices']}, tta {result['tta']}: "
          f"{best['total']:.2f} s per {result['volume']} x {result['modalities']} volume (model "
          f"{best['model']:.2f} s, recipe {best['recipe_forward']:.2f} s, inverse "
          f"{best['inverse_threshold']:.2f} s; {best['cpu']:.1f} CPU s; first call with "
          f"compilation {result['first_call_s']:.1f} s)")
    print(json.dumps(result))
  if len(results) > 1:
    base = results[0]['seconds_per_volume'] or float('nan')  # 0 only for toy volumes
    print('| TTA flips | passes | s per volume | x first row |\n|---|---|---|---|')
    for result, tta in zip(results, settings):
      print(f"| {'+'.join(tta) if tta else 'none'} | {len(inference.tta_passes(tta))} | "
            f"{result['seconds_per_volume']:.2f} | {result['seconds_per_volume'] / base:.2f} |")


def main(argv: list[str] | None = None) -> int:
  args = _parse(argv)
  try:
    recipe, model, variables = _build(args)
  except (TypeError, ValueError) as e:  # a field the network lacks, a recipe it cannot take
    print(f'error: --model {args.model} --recipe {args.recipe}: {e}', file=sys.stderr)
    return 1
  mesh = sharding_lib.make_mesh()
  results = [measure(model, recipe, mesh, variables, batch_size=args.batch_size,
                     repeats=args.repeats, tta=tta, volume=args.volume, name=args.model)
             for tta in args.settings]
  _print(args, results, args.settings)
  return 0


if __name__ == '__main__':
  sys.exit(main())
