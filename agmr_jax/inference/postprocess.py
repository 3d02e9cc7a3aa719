"""Post-processing of predicted lesion probabilities, chosen on the validation split.

    mask = PostProcess(threshold=0.4, min_component_mm3=200.0)(probs, spacing)

keeps the voxels with probability >= threshold, then removes every connected component
(26-connectivity) smaller than `min_component_mm3` in physical volume. PostProcess() (0.5, 0) is
the plain 0.5 threshold used before any tuning.

Why: per-case DSC scores a case with no lesion 1 if its prediction is empty and 0 for a single
stray voxel, and stray specks cost small precision on every other case. nnU-Net therefore decides
its post-processing (component removal) on held-out cases after training; here the decision is
the pair (threshold, minimum component volume), made on the validation split in the source
geometry (the grid the papers' metrics are computed on) with `tune`, and stored in the run's
workdir as postprocess.json, which evaluation and prediction then apply. The grid is small on
purpose: it is chosen on a handful of cases.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from agmr_jax import runs

FILENAME = runs.POSTPROCESS
THRESHOLDS = (0.3, 0.4, 0.5)
# Specks only: at the demo's 64x64 a 200 mm3 component is one or two pixels on a few slices, while
# real lesions start around that size (the synthetic ones at 200 mm3); larger removals would trade
# real lesions for noise-level gains on a handful of validation cases.
MIN_COMPONENT_MM3 = (0.0, 50.0, 200.0)
_FULL = np.ones((3, 3, 3), bool)


@dataclasses.dataclass(frozen=True)
class PostProcess:
  """Probability volume -> bool mask: threshold, then drop components under a volume (mm3)."""
  threshold: float = 0.5
  min_component_mm3: float = 0.0

  def __post_init__(self):
    if not 0.0 < self.threshold < 1.0:
      raise ValueError(f'threshold must lie in (0, 1), got {self.threshold}')
    if self.min_component_mm3 < 0:
      raise ValueError(f'min_component_mm3 must be >= 0, got {self.min_component_mm3}')

  def __call__(self, probs: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    return remove_small_components(probs >= self.threshold, spacing, self.min_component_mm3)


def remove_small_components(mask: np.ndarray, spacing: Sequence[float],
                            min_mm3: float) -> np.ndarray:
  """`mask` without its 26-connected components of physical volume < min_mm3 (a new array)."""
  mask = np.asarray(mask, bool)
  if min_mm3 <= 0 or not mask.any():
    return mask.copy()
  labels, n = ndimage.label(mask, _FULL)
  voxels = np.bincount(labels.ravel(), minlength=n + 1)
  keep = voxels * float(np.prod(spacing)) >= min_mm3
  keep[0] = False
  return keep[labels]


def grid(thresholds: Iterable[float] = THRESHOLDS,
         min_volumes: Iterable[float] = MIN_COMPONENT_MM3) -> list[PostProcess]:
  return [PostProcess(float(t), float(m)) for t in thresholds for m in min_volumes]


def save(workdir: str | pathlib.Path, pp: PostProcess, **info) -> pathlib.Path:
  """Writes {workdir}/postprocess.json: the choice plus whatever `info` records about it."""
  path = pathlib.Path(workdir) / FILENAME
  payload = {'threshold': pp.threshold, 'min_component_mm3': pp.min_component_mm3, **info}
  tmp = path.with_name(f'.{FILENAME}.tmp')
  tmp.write_text(json.dumps(payload, indent=2, default=float))
  tmp.replace(path)
  return path


def load(workdir: str | pathlib.Path) -> PostProcess:
  """The run's chosen post-processing, or PostProcess() (threshold 0.5) if none was chosen."""
  path = pathlib.Path(workdir) / FILENAME
  if not path.exists():
    return PostProcess()
  try:
    payload = json.loads(path.read_text())
    return PostProcess(float(payload['threshold']), float(payload['min_component_mm3']))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{path}: not a post-processing choice ({e})') from e


def load_shared(workdirs) -> tuple[PostProcess, str]:
  """(post-processing, how it was decided) for one run or an ensemble.

  An ensemble uses its members' choice when they all chose the same (the folds of one
  cross-validation usually do); otherwise the plain 0.5 threshold, since no member's choice was
  made on the averaged probabilities. --threshold / --min_component_mm3 override either.
  """
  chosen = [load(w) for w in workdirs]
  if len(set(chosen)) == 1:
    return chosen[0], 'the run\'s choice' if len(chosen) == 1 else 'the members\' common choice'
  return PostProcess(), 'threshold 0.5: the members chose differently'
