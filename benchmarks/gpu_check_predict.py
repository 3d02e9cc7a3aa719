"""gpu_check stage (c): seconds to predict one 197x233x189 volume, per network, bf16 and fp32.

Each network runs in its own process (`--network NAME`), which measures it through
benchmarks/predict_speed.py's own measurement (`measure`: recipe forward, the model over all 189
slices, inverse and threshold; the first, compiling pass excluded) with the network's paper recipe,
a synthetic head repeated across the recipe's modalities (speed does not depend on the values),
and each compute dtype.
"""

import argparse
import dataclasses
import json
import subprocess
import sys
import time

RESULT_TAG = 'GPU_CHECK_PREDICT '
# network -> (recipe, output size override): the recipe each network's paper config predicts with.
RECIPES = {
    'unet': ('agmr_2p5d', None),
    'attention_unet': ('agmr_2p5d', None),
    'dunet': ('agmr_2p5d', None),
    'agmr_net': ('agmr_2p5d', None),
    'clci_net': ('clci', None),
    'mdanet': ('mdanet_isles2018', (128, 128)),  # configs/mdanet.py's ISLES 2018 size.
    'cross_attention_unet': ('thesis_ct', None),
}


def measure(network: str, precision: str, *, tiny: bool, batch: int, repeats: int) -> dict:
  """predict_speed's measurement of one network at one precision (random weights)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from agmr_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from agmr_jax.inference import loading  # pylint: disable=g-import-not-at-top
  from benchmarks import predict_speed  # pylint: disable=g-import-not-at-top
  from benchmarks import throughput_common as common  # pylint: disable=g-import-not-at-top
  from benchmarks.gpu_check_tiny import TINY  # pylint: disable=g-import-not-at-top
  from input_pipeline import recipes  # pylint: disable=g-import-not-at-top
  name, size = RECIPES[network]
  recipe = recipes.RECIPES[name]
  kwargs = dict(common.NETWORKS[network].model_kwargs)
  if tiny:
    size, kwargs = TINY[network][0][:2], {**kwargs, **TINY[network][1]}
  if size:
    recipe = dataclasses.replace(recipe, size=size)
  dtype = jnp.bfloat16 if precision == 'bf16' else jnp.float32
  model = loading.network(network, kwargs, recipe, dtype)
  # Random variables without compiling the init graph (slow on CPU; speed ignores the values).
  variables = jax.device_put(common.synthetic_variables(model, (1, *recipe.slice_shape)))
  result = predict_speed.measure(model, recipe, sharding_lib.make_mesh(), variables,
                                 batch_size=batch, repeats=repeats, name=network)
  return {**result, 'precision': precision}


def _worker(args) -> None:
  for precision in args.precisions.split(','):
    try:
      record = {'status': 'ok', **measure(args.network, precision, tiny=args.tiny,
                                          batch=args.batch_size, repeats=args.repeats)}
    except Exception as e:  # pylint: disable=broad-except
      record = {'status': 'error', 'error': f'{type(e).__name__}: {e}'[:1500]}
    print(RESULT_TAG + json.dumps({'network': args.network, 'precision': precision, **record}),
          flush=True)


def run(ctx, budget_s: float) -> dict:
  """One process per network still missing; rows already measured (a resumed check) are kept."""
  deadline = time.monotonic() + budget_s
  rows = [r for r in ctx.previous.get('rows', []) if r.get('status') == 'ok']
  done = {(r['network'], r['precision']) for r in rows}
  precisions = ('bf16',) if ctx.dry_run else ('bf16', 'fp32')
  for network in ctx.networks:
    todo = [p for p in precisions if (network, p) not in done]
    left = deadline - time.monotonic()
    if not todo or left < 15:
      continue
    cmd = [sys.executable, '-m', 'benchmarks.gpu_check_predict', '--network', network, '--precisions', ','.join(todo),
           '--batch_size', str(ctx.batch), '--repeats', '1' if ctx.dry_run else '2']
    cmd += ['--tiny'] if ctx.dry_run else []
    try:
      proc = subprocess.run(cmd, cwd=ctx.repo, env=ctx.env(), capture_output=True, text=True,
                            timeout=left, check=False)
      out, err = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
      out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
      err = 'timed out at the stage deadline'
    ctx.append_log('predict', ' '.join(cmd) + '\n' + out + '\n' + (err or '')[-3000:])
    got = [json.loads(line[len(RESULT_TAG):]) for line in out.splitlines()
           if line.startswith(RESULT_TAG)]
    rows += got or [{'network': network, 'precision': p, 'status': 'error',
                     'error': (err or '')[-500:]} for p in todo]
  complete = sum(r.get('status') == 'ok' for r in rows) == len(precisions) * len(ctx.networks)
  return {'status': 'ok' if complete else 'incomplete', 'rows': rows}


def summary_lines(record: dict) -> list[str]:
  lines = ['| network | precision | recipe input | s / volume | model s | recipe s | inverse s | '
           'first call s |', '|---|---|---|---|---|---|---|---|']
  for r in record.get('rows', []):
    if r.get('status') != 'ok':
      lines.append(f"| {r['network']} | {r['precision']} | error: {r.get('error', '')[:120]} "
                   '| | | | | |')
      continue
    stages = r['stages_s']
    lines.append(f"| {r['network']} | {r['precision']} | {r['recipe']} {tuple(r['size'])} x "
                 f"{r['modalities']} | {r['seconds_per_volume']} | {stages['model']} | "
                 f"{stages['recipe_forward']} | {stages['inverse_threshold']} | "
                 f"{r['first_call_s']} |")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--network', required=True, choices=sorted(RECIPES))
  parser.add_argument('--precisions', default='bf16,fp32')
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--tiny', action='store_true', help='dry run: tiny widths, 32x32 slices')
  _worker(parser.parse_args())


if __name__ == '__main__':
  main()
