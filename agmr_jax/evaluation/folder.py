"""Evaluating any folder of predicted masks against a folder of labels (nnU-Net's
evaluate_folder), so masks from other tools join the same tables.

Files pair by name: `{case}.nii.gz` (or `.nii`) in both folders; `case_id` is the name without
the suffix. A prediction is lesion where it is nonzero, and so is a label. Metrics are
metrics.case_metrics in the label's voxel spacing; the report is the one `evaluate` writes
(cases.csv, summary.json, summary.md, dsc_boxplot.png), staged in a hidden folder and renamed
into place, so a failure leaves nothing behind.
"""

import pathlib
import shutil
import tempfile

import numpy as np

from agmr_jax import progress
from agmr_jax.evaluation import metrics
from agmr_jax.evaluation import report
from input_pipeline.layouts import common as layout_files
from input_pipeline import nifti
from input_pipeline.errors import DataError


def nifti_cases(folder: pathlib.Path, what: str) -> dict[str, pathlib.Path]:
  """{case_id: file} of a folder's .nii.gz / .nii files (other files are ignored)."""
  if not folder.is_dir():
    raise DataError(folder, f'{what} folder does not exist')
  found = {}
  for path in sorted(folder.iterdir()):
    stem = layout_files.strip_suffix(path.name)
    if stem is None or path.name.startswith('.') or not path.is_file():
      continue
    if stem in found:
      raise DataError(path, f'case {stem} is also given by {found[stem].name}')
    found[stem] = path
  if not found:
    raise DataError(folder, f'no .nii.gz or .nii file in the {what} folder')
  return found


def pair_cases(pred_dir: pathlib.Path, gt_dir: pathlib.Path) -> list[tuple[str, pathlib.Path,
                                                                            pathlib.Path]]:
  """(case_id, prediction, label) for every case; a case missing on either side is an error."""
  preds, labels = nifti_cases(pred_dir, 'prediction'), nifti_cases(gt_dir, 'label')
  for case_id in sorted(set(labels) - set(preds), key=layout_files.natural_key):
    raise DataError(pred_dir, f'case {case_id} has a label ({labels[case_id].name}) but no '
                    f'prediction {case_id}.nii.gz')
  for case_id in sorted(set(preds) - set(labels), key=layout_files.natural_key):
    raise DataError(gt_dir, f'case {case_id} has a prediction ({preds[case_id].name}) but no '
                    f'label {case_id}.nii.gz')
  return [(c, preds[c], labels[c]) for c in sorted(preds, key=layout_files.natural_key)]


def score_case(case_id: str, pred_path: pathlib.Path, gt_path: pathlib.Path, *,
               lesion_variant: str = 'isles22') -> dict:
  truth = nifti.load_volume(gt_path)
  pred = nifti.load_volume(pred_path)
  nifti.check_same_grid(pred_path, pred, gt_path, truth)
  return {'case_id': case_id, **metrics.case_metrics(pred.data != 0, truth.data != 0,
                                                     truth.spacing, lesion_variant=lesion_variant)}


def evaluate_folder(pred_dir, gt_dir, out_dir, *, overwrite: bool = False,
                    lesion_variant: str = 'isles22') -> dict:
  """Scores every case and writes the report into out_dir; returns {'summary', 'rows'}."""
  pred_dir, gt_dir, out_dir = pathlib.Path(pred_dir), pathlib.Path(gt_dir), pathlib.Path(out_dir)
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f'{out_dir}: exists; pass --overwrite to replace it')
  cases = pair_cases(pred_dir, gt_dir)
  rows = []
  bar = progress.Cases(len(cases), 'evaluate')
  for case_id, pred_path, gt_path in cases:
    rows.append(score_case(case_id, pred_path, gt_path, lesion_variant=lesion_variant))
    bar.step(case_id, f"DSC {rows[-1]['dsc']:.4f}")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}-', dir=out_dir.parent))
  try:
    summary = report.write_report(rows, tmp, f'{pred_dir.name} vs {gt_dir.name}',
                                  {'pred_dir': str(pred_dir.resolve()),
                                   'gt_dir': str(gt_dir.resolve()),
                                   'lesion_metrics': lesion_variant})
    if out_dir.exists():
      shutil.rmtree(out_dir)
    tmp.rename(out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return {'summary': summary, 'rows': rows, 'mean_dsc': float(np.mean([r['dsc'] for r in rows]))}
