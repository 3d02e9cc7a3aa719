"""A study's montage: the same test cases, one axial slice each, truth and predictions outlined.

Cases: the reference's test cases with a lesion at the largest, median and smallest true volume
(fewer when the split holds fewer). Slice: the one with the largest true lesion area. The scan is
the case's first modality as the run's records list it (slices_meta.json); predicted masks are
the runs' `eval/{split}/predictions/{case}.nii.gz` (written with `write_predictions`), in the
scan's own voxel axes, as the truth.
"""

import json
import pathlib

import numpy as np

from agmr_jax import config_spec
from agmr_jax import runs


def pick_cases(cases: dict[str, dict], n: int) -> list[str]:
  """Up to n case ids: lesion cases at the largest, median and smallest true volume, then more."""
  order = sorted(cases, key=lambda i: (-cases[i].get('n_truth', 0), i))
  lesion = [i for i in order if cases[i].get('n_truth', 0) > 0] or order
  picks = [lesion[0], lesion[len(lesion) // 2], lesion[-1]] if len(lesion) >= 3 else []
  return list(dict.fromkeys([*picks, *lesion, *order]))[:n]


def case_sources(workdir) -> dict[str, dict]:
  """{case_id: {'images': {modality: path}, 'masks': [path]}} of the records the run read."""
  config = runs.load_config(workdir)
  records = runs.read_records(workdir) or {}
  data_dir = pathlib.Path(config.data.data_dir)
  if not data_dir.is_absolute():
    data_dir = config_spec.REPO / data_dir  # Runs start in the repository (launch/sweep.py).
  metas = sorted(data_dir.glob(f"*/{records.get('name', '?')}/*/slices_meta.json"))
  if not metas:
    raise FileNotFoundError(f'{workdir}: the records it was trained on ({records.get("name")}) '
                            f'are not under {data_dir}')
  return json.loads(metas[-1].read_text())['cases']


def _load(path) -> np.ndarray:
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  return np.asarray(nib.load(str(path)).dataobj)


def _panel(ax, image, truth, pred, title):
  ax.imshow(image.T, cmap='gray', origin='lower')
  if truth.any():
    ax.contour(truth.T, levels=[0.5], colors='lime', linewidths=0.8)
  if pred is not None and pred.any():
    ax.contour(pred.T, levels=[0.5], colors='red', linewidths=0.8)
  ax.set_title(title, fontsize=7)
  ax.axis('off')


def montage(workdirs: dict[str, pathlib.Path], reference_cases: dict[str, dict], split: str,
            num_cases: int, path: pathlib.Path) -> None:
  """Rows: cases; columns: the scan with the truth, then each network's prediction (red) over
  the truth (green)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  sources = case_sources(next(iter(workdirs.values())))
  ids = pick_cases(reference_cases, num_cases)
  cols = 1 + len(workdirs)
  fig, axes = plt.subplots(len(ids), cols, figsize=(1.8 * cols, 1.9 * len(ids)), squeeze=False)
  for row, case_id in zip(axes, ids):
    source = sources[case_id]
    truth = _load(source['masks'][0]) > 0
    image = _load(next(iter(source['images'].values())))
    z = int(np.argmax(truth.reshape(-1, truth.shape[-1]).sum(0)))
    _panel(row[0], image[..., z], truth[..., z], None, f'{case_id} z={z}: truth')
    for ax, (name, workdir) in zip(row[1:], workdirs.items()):
      pred_path = runs.eval_dir(workdir, split) / 'predictions' / f'{case_id}.nii.gz'
      pred = _load(pred_path)[..., z] > 0 if pred_path.exists() else None
      _panel(ax, image[..., z], truth[..., z], pred,
             name if pred is not None else f'{name}: no prediction written')
  fig.suptitle('green: truth, red: prediction', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
