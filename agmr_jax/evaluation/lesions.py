"""Lesion-wise challenge metrics: lesion F1, lesion count difference, absolute volume difference.

Defined as the ISLES 2022 evaluation code defines them (`utils/eval_utils.py` of the challenge's
public repository), which the ATLAS v2.0 challenge ranks by too:

  lesions: the connected components of the nonzero voxels, 26-connected (ISLES 2022);
  a ground-truth lesion with at least one voxel in the prediction is a true positive (TP), one
    with none a false negative (FN); a predicted component with no voxel in the ground truth is a
    false positive (FP). One predicted blob bridging two lesions counts two TPs and no FP.
  lesion_f1 = TP / (TP + (FP + FN) / 2); 1 when both masks are empty, 0 when exactly one is.
  lesion_count_diff = |components in the truth - components in the prediction|.
  volume_diff_ml = |truth voxels - predicted voxels| x voxel volume (ml), from the truth's spacing.

VARIANTS['atlas2'] is the ATLAS v2.0 reading: 6-connected components and the volume difference
in voxels (`volume_diff_voxels`). Everything else is the same.
"""

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class Variant:
  connectivity: int  # 26 or 6 (3D neighbourhood of a lesion's voxels).
  volume_unit: str  # 'ml' or 'voxels'.

  @property
  def volume_key(self) -> str:
    return f'volume_diff_{self.volume_unit}'


VARIANTS = {'isles22': Variant(26, 'ml'), 'atlas2': Variant(6, 'voxels')}
DEFAULT = 'isles22'
_STRUCTURE = {26: np.ones((3, 3, 3), bool), 6: ndimage.generate_binary_structure(3, 1)}


def components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
  """(labels, count) of a 3D mask's connected components (6- or 26-connected)."""
  if connectivity not in _STRUCTURE:
    raise ValueError(f'lesion connectivity must be 6 or 26, got {connectivity}')
  if mask.ndim != 3:
    raise ValueError(f'lesion metrics need a 3D volume, got shape {mask.shape}')
  return ndimage.label(mask, structure=_STRUCTURE[connectivity])


def lesion_counts(pred: np.ndarray, truth: np.ndarray,
                  connectivity: int = 26) -> dict[str, int]:
  """{'lesion_tp', 'lesion_fn', 'lesion_fp', 'n_lesions_truth', 'n_lesions_pred'}."""
  truth_labels, n_truth = components(truth, connectivity)
  pred_labels, n_pred = components(pred, connectivity)
  hit = np.unique(truth_labels[pred & truth])
  tp = int(np.count_nonzero(hit))
  touching = np.unique(pred_labels[pred & truth])
  fp = n_pred - int(np.count_nonzero(touching))
  return dict(lesion_tp=tp, lesion_fn=n_truth - tp, lesion_fp=fp, n_lesions_truth=n_truth,
              n_lesions_pred=n_pred)


def lesion_metrics(pred, truth, spacing=None, *, variant: str = DEFAULT) -> dict:
  """The three challenge metrics of one case, plus the lesion counts behind them.

  `pred` and `truth`: arrays of one shape, lesion = nonzero; `spacing`: voxel size in mm (needed
  for volume_diff_ml; None means 1 mm isotropic).
  """
  if variant not in VARIANTS:
    raise ValueError(f'unknown lesion-metric variant {variant!r}; known: {", ".join(VARIANTS)}')
  v = VARIANTS[variant]
  pred, truth = np.asarray(pred) != 0, np.asarray(truth) != 0
  if pred.shape != truth.shape:
    raise ValueError(f'prediction {pred.shape} and truth {truth.shape} differ in shape')
  counts = lesion_counts(pred, truth, v.connectivity)
  tp, fp, fn = counts['lesion_tp'], counts['lesion_fp'], counts['lesion_fn']
  if tp + fp + fn == 0:
    f1 = 1.0  # Both masks empty.
  else:
    f1 = tp / (tp + (fp + fn) / 2)
  voxels = abs(int(np.count_nonzero(truth)) - int(np.count_nonzero(pred)))
  if v.volume_unit == 'ml':
    voxel_ml = (1.0 if spacing is None else float(np.prod(np.asarray(spacing, float)))) / 1e3
    volume = voxels * voxel_ml
  else:
    volume = float(voxels)
  return {'lesion_f1': float(f1),
          'lesion_count_diff': abs(counts['n_lesions_truth'] - counts['n_lesions_pred']),
          v.volume_key: volume, **counts}
