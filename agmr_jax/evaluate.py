r"""Evaluates a trained run the way the papers do: per-case 3D metrics in the source geometry.

  python -m agmr_jax.evaluate --workdir runs/x [--split test] [--checkpoint best|latest|STEP]

For every case of the split, the model predicts all slices, the recipe's inverse puts the lesion
probabilities back into the original voxel grid (undoing resize, crop and transpose), and the
thresholded mask is compared with the original NIfTI mask(s) using the source voxel spacing
(metrics.py: DSC, precision, recall, F1, VOE, RVD, HD95, ASD; global DSC pooled over cases).

Writes into `{workdir}/eval/{split}/`: cases.csv (one row per case), summary.json and summary.md
(mean +- std as the papers print them), dsc_boxplot.png, and predictions/{case}.nii.gz with the
source affine and header. Everything goes to a temporary folder first and is moved into place at
the end; an existing result is only replaced with --overwrite.
"""

import csv
import json
from absl import logging
import pathlib
import shutil
import sys
import tempfile

import jax
import ml_collections
import numpy as np

from agmr_jax import checkpointing
from agmr_jax import inference
from agmr_jax import metrics
from agmr_jax import optim
from agmr_jax import reporting
from agmr_jax import sharding as sharding_lib
from agmr_jax import train_step as train_step_lib
from input_pipeline import nifti
from input_pipeline import pipeline
from input_pipeline import recipes

COLUMNS = ('case_id', 'dsc', 'precision', 'recall', 'voe', 'rvd', 'hd95', 'asd', 'empty',
           'n_truth', 'n_pred')


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path}: no config.json, is {workdir} a training workdir?')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_variables(workdir, config, model, mesh, input_shape, checkpoint: str):
  """(step, variables) of the chosen checkpoint, replicated over the mesh."""
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch=1, total_steps=1)
  init_fn = train_step_lib.make_init(model, input_shape, tx)
  rng = jax.random.key(0)
  shardings = jax.tree.map(lambda _: sharding_lib.replicated(mesh), jax.eval_shape(init_fn, rng))
  abstract = checkpointing.abstract_state(init_fn, rng, shardings)
  ckpt = checkpointing.Checkpointer(workdir)
  try:
    step, state = ckpt.restore_state(abstract, checkpoint)
  finally:
    ckpt.close()
  return step, state.variables


def recipe_of(dataset: pipeline.SliceDataset) -> recipes.Recipe:
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in dataset.meta['recipe'].items()}
  return recipes.Recipe(**fields)


def load_truth(case_meta: dict) -> tuple[np.ndarray, nifti.Geometry]:
  """The union of a case's original mask files and the geometry of its first image."""
  image = nifti.load_volume(next(iter(case_meta['images'].values())))
  truth = np.zeros(image.shape, bool)
  for path in case_meta['masks']:
    truth |= nifti.load_volume(path, kind='mask').data > 0
  return truth, nifti.Geometry.of(image)


def evaluate_cases(predictor, variables, dataset, folds, *, out_dir: pathlib.Path | None,
                   threshold: float = 0.5) -> list[dict]:
  """Per-case metrics in the source geometry; writes predictions when out_dir is given."""
  recipe = recipe_of(dataset)
  rows = []
  for case in pipeline.iter_cases(dataset, folds):
    probs = predictor(variables, case.images)
    volume = recipe.inverse(probs, recipes.SliceGeometry.from_array(case.geometry))
    pred = volume >= threshold
    truth, geometry = load_truth(dataset.meta['cases'][case.case_id])
    row = {'case_id': case.case_id, **metrics.case_metrics(pred, truth, geometry.spacing)}
    rows.append(row)
    if out_dir is not None and jax.process_index() == 0:
      nifti.save_mask(out_dir / 'predictions' / f'{case.case_id}.nii.gz',
                      pred.astype(np.uint8), geometry)
    logging.info('%s: DSC %.4f (%d true, %d predicted voxels)', case.case_id, row['dsc'],
                 row['n_truth'], row['n_pred'])
  return rows


def write_report(rows: list[dict], out_dir: pathlib.Path, title: str) -> dict:
  """cases.csv, summary.json, summary.md and the DSC box plot; returns the summary."""
  with (out_dir / 'cases.csv').open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]), extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  summary = metrics.summarize(rows)
  (out_dir / 'summary.json').write_text(json.dumps(summary, indent=2, default=float))
  formatted = metrics.format_summary(summary)
  lines = [f'# {title}', '', reporting.table(rows, list(COLUMNS)), '',
           '| metric | mean ± std |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in formatted.items()]
  (out_dir / 'summary.md').write_text('\n'.join(lines) + '\n')
  _boxplot([r['dsc'] for r in rows], out_dir / 'dsc_boxplot.png', title)
  return summary


def _boxplot(values, path: pathlib.Path, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(3, 4))
  ax.boxplot(values)
  ax.set_ylabel('per-case DSC')
  ax.set_ylim(0, 1)
  ax.set_title(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def evaluate_run(workdir, config=None, *, split: str = 'test', checkpoint: str = 'best',
                 write_predictions: bool = True, overwrite: bool = True,
                 flip_tta: bool = False) -> dict:
  """Evaluates `split` of a run; returns {'summary', 'rows', 'step', 'out_dir'}."""
  from agmr_jax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  workdir = pathlib.Path(workdir)
  config = config or load_config(workdir)
  final_dir = workdir / 'eval' / split
  if final_dir.exists() and not overwrite:
    raise FileExistsError(f'{final_dir} exists; pass --overwrite to replace it')
  dataset = train.prepare_data(config)
  val_fold = config.data.val_fold if config.data.val_fold >= 0 else None
  folds = dataset.split_folds(config.data.test_fold, val_fold)
  if split not in folds:
    raise ValueError(f'split {split!r} is not one of {sorted(folds)}')
  mesh = sharding_lib.make_mesh()
  model = train.build_model(config, dataset)
  input_shape = (1, *dataset.fold_source(folds[split][0])[0]['image'].shape)
  step, variables = restore_variables(workdir, config, model, mesh, input_shape, checkpoint)
  predictor = inference.Predictor(model, mesh, config.eval_batch_size, flip_tta=flip_tta)
  final_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{split}-', dir=final_dir.parent))
  try:
    rows = evaluate_cases(predictor, variables, dataset, folds[split],
                          out_dir=tmp if write_predictions else None)
    summary = write_report(rows, tmp, f'{config.model} {split} (step {step})')
    if final_dir.exists():
      shutil.rmtree(final_dir)
    tmp.rename(final_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(reporting.table(rows, ['case_id', 'dsc', 'hd95', 'asd', 'n_truth', 'n_pred']))
  print(f'{split}: mean per-case DSC {metrics.format_mean_std(summary["dsc"]["mean"], summary["dsc"]["std"])}'
        f', global DSC {summary["global_dsc"]:.3f} over {len(rows)} cases (step {step})')
  return {'summary': summary, 'rows': rows, 'step': step, 'out_dir': final_dir}


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  try:
    evaluate_run(f.workdir, split=f.split, checkpoint=f.checkpoint, overwrite=f.overwrite,
                 write_predictions=f.write_predictions, flip_tta=f.flip_tta)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  flags.DEFINE_string('workdir', None, 'Training workdir.', required=True)
  flags.DEFINE_string('split', 'test', "'test' or 'validation'.")
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
  flags.DEFINE_bool('overwrite', False, 'Replace an existing evaluation of this split.')
  flags.DEFINE_bool('write_predictions', True, 'Write predicted masks as NIfTI.')
  flags.DEFINE_bool('flip_tta', False, 'Average with the left-right flipped prediction.')
  app.run(main)
