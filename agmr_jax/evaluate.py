r"""Evaluates a trained run the way the papers do: per-case 3D metrics in the source geometry.

  python -m agmr_jax.evaluate --workdir runs/x [--split test] [--checkpoint best|latest|STEP]

For every case of the split, the model predicts all slices, the recipe's inverse puts the lesion
probabilities back into the original voxel grid (undoing resize, crop and transpose), the mask is
made from them with the run's post-processing (postprocess.py: the threshold and minimum lesion
component volume chosen on validation after training; threshold 0.5 alone without a choice or
with --nopostprocess), and compared with the original NIfTI mask(s) using the source voxel
spacing (metrics.py: DSC, precision, recall, F1, VOE, RVD, HD95, ASD; global DSC pooled over
cases).

Writes into `{workdir}/eval/{name}/`, name = the split, plus `-tta` with flip test-time
augmentation, `-{checkpoint}` for a checkpoint other than 'best' and `-raw` without
post-processing (so a variant never replaces the main result): cases.csv (one row per case, full
precision), summary.json (the `metrics.summarize` dict plus a 'run' entry saying what was
evaluated: checkpoint, threshold, minimum component volume...), summary.md (mean ± std as
the papers print them, global DSC, the per-case table), dsc_boxplot.png, and
predictions/{case}.nii.gz (uint8, the source affine and header). Everything goes to a hidden
temporary folder first and is renamed into place at the end, so a failure leaves nothing behind;
an existing result is only replaced with --overwrite.

The run-loading helpers (`load_config`, `run_recipe`, `build_model`, `load_predictor`) are shared
with predict.py: evaluation and prediction restore and run a model identically.
"""

import csv
import dataclasses
import json
from absl import logging
import pathlib
import shutil
import tempfile
import types
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from agmr_jax import checkpointing
from agmr_jax import cli
from agmr_jax import inference
from agmr_jax import metrics
from agmr_jax import optim
from agmr_jax import postprocess
from agmr_jax import reporting
from agmr_jax import sharding as sharding_lib
from agmr_jax import train_step as train_step_lib
from input_pipeline import layouts
from input_pipeline import nifti
from input_pipeline import pipeline
from input_pipeline import recipes
from input_pipeline.errors import DataError

COLUMNS = ('case_id', 'dsc', 'precision', 'recall', 'voe', 'rvd', 'hd95', 'asd', 'empty',
           'n_truth', 'n_pred')
_INT_FIELDS = ('tp', 'n_pred', 'n_truth')


def _tuples(value):
  """JSON turns tuples into lists; model fields and recipe sizes expect tuples back."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config.json a training run wrote into its workdir."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'{workdir}: run folder does not exist')
  path = workdir / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path}: no config.json, is {workdir} a training workdir?')
  try:
    return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
  except json.JSONDecodeError as e:
    raise DataError(path, f'not valid JSON ({e})') from e


def config_changes(workdir: str | pathlib.Path,
                   config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
  """(dotted field, value in the workdir's config.json, value in `config`) for every field that
  differs; [] when the workdir has no config.json yet."""
  path = pathlib.Path(workdir) / 'config.json'
  if not path.exists():
    return []
  try:
    old = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(path, f'not valid JSON ({e})') from e
  return sorted(_changes(old, json.loads(config.to_json_best_effort())))


def _changes(a, b, prefix=''):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      yield from _changes(a.get(k), b.get(k), f'{prefix}{k}.')
  elif a != b:
    yield prefix.rstrip('.'), a, b


def parse_checkpoint(value) -> str | int:
  """'best', 'latest' or a non-negative step number."""
  if value in ('best', 'latest'):
    return value
  try:
    step = int(value)
  except (TypeError, ValueError):
    step = -1
  if step < 0:
    raise ValueError(f"checkpoint must be 'best', 'latest' or a step number, got {value!r}")
  return step


def run_recipe(config: ml_collections.ConfigDict, workdir=None) -> recipes.Recipe:
  """The recipe a run was trained with, without building its data.

  First choice: the records' recipe that the run's test evaluation stored (immune to later edits
  of recipes.RECIPES); else the config's recipe, which names the records exactly (their folder
  name hashes the recipe); the built records only when the config leaves the modalities open.
  """
  from agmr_jax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  stored = pathlib.Path(workdir) / 'eval' / 'test' / 'summary.json' if workdir else None
  if stored is not None and stored.exists():
    recipe = json.loads(stored.read_text()).get('run', {}).get('recipe')
    if recipe:
      return recipes.Recipe(**_tuples(recipe))
  recipe = train.recipe_from_config(config)
  if recipe.modalities is None:  # taken from the dataset at build time: ask the built records
    recipe = recipe_of(train.prepare_data(config))
  return recipe


def recipe_of(dataset: pipeline.SliceDataset) -> recipes.Recipe:
  return recipes.Recipe(**_tuples(dataset.meta['recipe']))


def build_model(config: ml_collections.ConfigDict, recipe: recipes.Recipe):
  """The run's network, built by train.build_model itself (the recipe's groups passed on).

  train.build_model reads only the records' metadata, whose 'recipe' entry is
  `dataclasses.asdict(recipe)` (input_pipeline/builder.py), so that is all it is given here.
  """
  from agmr_jax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  records = types.SimpleNamespace(meta={'recipe': dataclasses.asdict(recipe)})
  return train.build_model(config, records)


def _choose_checkpoint(ckpt: checkpointing.Checkpointer, workdir: pathlib.Path, which):
  """(manager, step) of 'best' (else latest), 'latest' or a step kept by either manager."""
  if which == 'best' and ckpt.best.best_step() is not None:
    return ckpt.best, ckpt.best.best_step()
  if which in ('best', 'latest'):
    if which == 'best':
      logging.warning('%s has no best checkpoint (no validation split?): using the latest', workdir)
    step = ckpt.latest.latest_step()
    if step is None:
      raise FileNotFoundError(f'{workdir}: no checkpoint to restore')
    return ckpt.latest, step
  for manager in (ckpt.latest, ckpt.best):
    if which in manager.all_steps():
      return manager, which
  kept = sorted(set(ckpt.latest.all_steps()) | set(ckpt.best.all_steps()))
  raise FileNotFoundError(f'{workdir}: no checkpoint at step {which} (kept: {kept or "none"})')


def restore_variables(workdir, config, model, mesh, input_shape, checkpoint) -> tuple[int, dict]:
  """(step, variables) of the chosen checkpoint, replicated over the mesh."""
  workdir = pathlib.Path(workdir)
  if not any((workdir / d).is_dir() for d in ('checkpoints', 'best')):
    raise FileNotFoundError(f'{workdir}: no checkpoints/ or best/ folder, was the run trained?')
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch=1, total_steps=1)
  init_fn = train_step_lib.make_init(model, input_shape, tx)
  rng = jax.random.key(0)
  shardings = jax.tree.map(lambda _: sharding_lib.replicated(mesh), jax.eval_shape(init_fn, rng))
  abstract = checkpointing.abstract_state(init_fn, rng, shardings)
  ckpt = checkpointing.Checkpointer(workdir)
  try:
    manager, step = _choose_checkpoint(ckpt, workdir, parse_checkpoint(checkpoint))
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  finally:
    ckpt.close()
  return step, restored.state.variables


def load_predictor(workdir, config, recipe: recipes.Recipe, *, checkpoint='best',
                   flip_tta: bool = False, batch_size: int | None = None):
  """(Predictor, variables, step) for a run: its model, restored, batched over all devices."""
  mesh = sharding_lib.make_mesh()
  model = build_model(config, recipe)
  step, variables = restore_variables(workdir, config, model, mesh, (1, *recipe.slice_shape),
                                      checkpoint)
  batch_size = batch_size or config.eval_batch_size
  batch_size = -(-batch_size // mesh.size) * mesh.size  # round up to a multiple of the devices
  return inference.Predictor(model, mesh, batch_size, flip_tta=flip_tta), variables, step


def load_truth(case_id: str, case_meta: dict) -> tuple[np.ndarray, nifti.Geometry]:
  """The union of a case's original mask files, checked against the grid of its first image."""
  first = next(iter(case_meta['images']))
  case = layouts.Case(case_id, {first: pathlib.Path(case_meta['images'][first])},
                      tuple(pathlib.Path(p) for p in case_meta['masks']),
                      pathlib.Path(case_meta['images'][first]).parent)
  if not case.masks:
    raise DataError(case.root, f'case {case_id} has no lesion mask to evaluate against')
  _, mask, geometry = nifti.load_case(case)
  return mask > 0, geometry


def source_volumes(predictor, variables, dataset, folds):
  """Yields (case_id, probabilities, truth, geometry) per case, all in the source geometry."""
  recipe = recipe_of(dataset)
  for case in pipeline.iter_cases(dataset, folds):
    probs = recipe.inverse(predictor(variables, case.images),
                           recipes.SliceGeometry.from_array(case.geometry))
    truth, geometry = load_truth(case.case_id, dataset.meta['cases'][case.case_id])
    if truth.shape != probs.shape:
      raise DataError(dataset.meta['cases'][case.case_id]['masks'][0],
                      f'mask shape {truth.shape} differs from the records\' volume {probs.shape}')
    yield case.case_id, probs, truth, geometry


def evaluate_cases(predictor, variables, dataset, folds, *, out_dir: pathlib.Path | None,
                   post: postprocess.PostProcess = postprocess.PostProcess()) -> list[dict]:
  """Per-case metrics in the source geometry; writes predictions when out_dir is given."""
  rows = []
  for case_id, probs, truth, geometry in source_volumes(predictor, variables, dataset, folds):
    pred = post(probs, geometry.spacing)
    row = {'case_id': case_id, **metrics.case_metrics(pred, truth, geometry.spacing)}
    rows.append(row)
    if out_dir is not None and jax.process_index() == 0:
      nifti.save_mask(out_dir / 'predictions' / f'{case_id}.nii.gz', pred.astype(np.uint8),
                      geometry)
    logging.info('%s: DSC %.4f (%d true, %d predicted voxels)', case_id, row['dsc'],
                 row['n_truth'], row['n_pred'])
  return rows


def read_cases(eval_dir: str | pathlib.Path) -> list[dict]:
  """The rows of an evaluation's cases.csv, numbers parsed back ('nan' -> NaN)."""
  path = pathlib.Path(eval_dir) / 'cases.csv'
  if not path.exists():
    raise FileNotFoundError(f'{path}: no per-case results (run agmr_jax.evaluate first)')
  with path.open(newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows or 'case_id' not in rows[0]:
    raise DataError(path, 'no case rows')
  for row in rows:
    for key in row:
      if key in metrics.METRICS:
        row[key] = float(row[key])
      elif key in _INT_FIELDS:
        row[key] = int(row[key])
  return rows


def summary_markdown(summary: dict, title: str, rows: list[dict] | None = None) -> str:
  """summary.md: the papers' mean ± std per metric, global DSC, empty counts, per-case table."""
  formatted = metrics.format_summary(summary)
  lines = [f'# {title}', '', '| metric | mean ± std |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in formatted.items()]
  lines += ['', f"{summary['num_cases']} cases; empty masks: both {summary['num_both_empty']}, "
            f"prediction only {summary['num_pred_empty']}, truth only "
            f"{summary['num_truth_empty']} (distances exclude them). Std over cases, ddof 0."]
  if rows:
    lines += ['', reporting.table(rows, list(COLUMNS))]
  return '\n'.join(lines) + '\n'


def write_report(rows: list[dict], out_dir: pathlib.Path, title: str,
                 run_info: dict | None = None) -> dict:
  """cases.csv, summary.json, summary.md and the DSC box plot; returns the summary."""
  if not rows:
    raise ValueError(f'{out_dir}: no cases to report')
  with (out_dir / 'cases.csv').open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]), extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  summary = metrics.summarize(rows)
  payload = {'run': run_info or {}, **summary}
  (out_dir / 'summary.json').write_text(json.dumps(payload, indent=2, default=float))
  (out_dir / 'summary.md').write_text(summary_markdown(summary, title, rows))
  boxplot({title: [r['dsc'] for r in rows]}, out_dir / 'dsc_boxplot.png')
  return summary


def boxplot(series: dict[str, list[float]], path: pathlib.Path, ylabel: str = 'per-case DSC'):
  """One box per named series of per-case values (the papers' Fig. 9 / Fig. 8)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(series), 4))
  ax.boxplot(list(series.values()))
  ax.set_xticks(range(1, len(series) + 1), list(series), rotation=20, ha='right', fontsize=7)
  ax.set_ylabel(ylabel)
  ax.set_ylim(0, 1)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def eval_name(split: str, checkpoint='best', flip_tta: bool = False,
              post: bool = True) -> str:
  """Folder name under eval/: 'test', 'test-tta', 'test-latest', 'test-tta-1200', 'test-raw'
  (without the run's post-processing)..."""
  return (split + ('-tta' if flip_tta else '') + ('' if checkpoint == 'best' else f'-{checkpoint}')
          + ('' if post else '-raw'))


def evaluate_run(workdir, config=None, *, split: str = 'test', checkpoint: str = 'best',
                 write_predictions: bool = True, overwrite: bool = True,
                 flip_tta: bool = False,
                 post: bool | postprocess.PostProcess = True) -> dict:
  """Evaluates `split` of a run; returns {'summary', 'rows', 'step', 'out_dir'}.

  With `post` True, the masks get the post-processing chosen on validation (postprocess.json,
  written by training); False, or a run without a choice, the plain 0.5 threshold; a
  PostProcess, that one (training passes its choice directly: no process reads the file before
  process 0 has written it).
  """
  from agmr_jax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  workdir = pathlib.Path(workdir)
  config = config or load_config(workdir)
  checkpoint = parse_checkpoint(checkpoint)
  final_dir = workdir / 'eval' / eval_name(split, checkpoint, flip_tta, post is not False)
  if isinstance(post, postprocess.PostProcess):
    chosen = post
  else:
    chosen = postprocess.load(workdir) if post else postprocess.PostProcess()
  if final_dir.exists() and not overwrite:
    raise FileExistsError(f'{final_dir}: exists; pass --overwrite to replace it')
  dataset = train.prepare_data(config)
  val_fold = config.data.val_fold if config.data.val_fold >= 0 else None
  folds = dataset.split_folds(config.data.test_fold, val_fold)
  if split not in folds:
    raise ValueError(f'split {split!r} is not one of {sorted(folds)}')
  predictor, variables, step = load_predictor(workdir, config, recipe_of(dataset),
                                              checkpoint=checkpoint, flip_tta=flip_tta)
  final_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{final_dir.name}-', dir=final_dir.parent))
  try:
    rows = evaluate_cases(predictor, variables, dataset, folds[split],
                          out_dir=tmp if write_predictions else None, post=chosen)
    run_info = dict(model=config.model, split=split, folds=folds[split], step=int(step),
                    checkpoint=str(checkpoint), flip_tta=flip_tta, threshold=chosen.threshold,
                    min_component_mm3=chosen.min_component_mm3, recipe=dataset.meta['recipe'])
    summary = write_report(rows, tmp, f'{config.model} {split} (step {step})', run_info)
    if jax.process_index() == 0:
      if final_dir.exists():
        shutil.rmtree(final_dir)
      tmp.rename(final_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  _print_result(rows, summary, split, step)
  return {'summary': summary, 'rows': rows, 'step': step, 'out_dir': final_dir}


def tune_postprocess(workdir, config=None, *, checkpoint: str = 'best') -> dict | None:
  """Chooses the run's post-processing on its validation split; writes postprocess.json.

  Every candidate of postprocess.grid() is scored by mean per-case DSC in the source geometry;
  the best one (ties: the plain 0.5 threshold first) is saved with the scores of all of them.
  Returns the saved payload, or None when the run has no validation split.
  """
  from agmr_jax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  workdir = pathlib.Path(workdir)
  config = config or load_config(workdir)
  if config.data.val_fold < 0:
    return None
  dataset = train.prepare_data(config)
  folds = dataset.split_folds(config.data.test_fold, config.data.val_fold)
  predictor, variables, step = load_predictor(workdir, config, recipe_of(dataset),
                                              checkpoint=parse_checkpoint(checkpoint))
  tally = postprocess.Tally(postprocess.grid())
  for _, probs, truth, geometry in source_volumes(predictor, variables, dataset,
                                                  folds['validation']):
    tally.add(probs, truth, geometry.spacing)
  chosen, score = tally.best()
  plain = tally.means()[tally.candidates.index(postprocess.PostProcess())]
  info = dict(step=int(step), split='validation', num_cases=len(tally.scores[0]),
              val_dsc=score, val_dsc_threshold_0_5=plain,
              candidates=[dict(threshold=c.threshold, min_component_mm3=c.min_component_mm3,
                               val_dsc=m) for c, m in zip(tally.candidates, tally.means())])
  if jax.process_index() == 0:
    postprocess.save(workdir, chosen, **info)
  logging.info('post-processing chosen on %d validation cases: threshold %.2f, components under '
               '%g mm3 removed; mean per-case DSC %.4f (threshold 0.5 alone: %.4f)',
               info['num_cases'], chosen.threshold, chosen.min_component_mm3, score, plain)
  return {'threshold': chosen.threshold, 'min_component_mm3': chosen.min_component_mm3, **info}


def _print_result(rows, summary, split, step) -> None:
  print(reporting.table(rows, ['case_id', 'dsc', 'hd95', 'asd', 'n_truth', 'n_pred']))
  for name, text in metrics.format_summary(summary).items():
    print(f'{name:>17}: {text}')
  print(f'{split}: mean per-case DSC '
        f'{metrics.format_mean_std(summary["dsc"]["mean"], summary["dsc"]["std"])}, global DSC '
        f'{summary["global_dsc"]:.3f} over {len(rows)} cases (step {step})')


def main(argv):
  result = cli.run(argv, lambda f: evaluate_run(
      f.workdir, split=f.split, checkpoint=f.checkpoint, overwrite=f.overwrite,
      write_predictions=f.write_predictions, flip_tta=f.flip_tta, post=f.postprocess))
  print(f'wrote {result["out_dir"]}')


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  flags.DEFINE_string('workdir', None, 'Training workdir.', required=True)
  flags.DEFINE_string('split', 'test', "'test' or 'validation'.")
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
  flags.DEFINE_bool('overwrite', False, 'Replace an existing evaluation of this split.')
  flags.DEFINE_bool('write_predictions', True, 'Write predicted masks as NIfTI.')
  flags.DEFINE_bool('flip_tta', False, 'Average with the left-right flipped prediction.')
  flags.DEFINE_bool('postprocess', True, "Apply the run's validation-chosen post-processing "
                    '(postprocess.json); --nopostprocess: threshold 0.5 only.')
  app.run(main)
