"""Choosing a run's post-processing on its validation split, as nnU-Net decides its own.

Every candidate of postprocess.grid() (threshold x minimum lesion component volume) is scored by
mean per-case DSC in the source geometry; the best (ties: the plain 0.5 threshold first) is saved
to the run's postprocess.json, which evaluation and prediction then apply.
"""

import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from agmr_jax import checkpointing
from agmr_jax import data
from agmr_jax import runs
from agmr_jax.evaluation import evaluate
from agmr_jax.evaluation import metrics
from agmr_jax.inference import loading
from agmr_jax.inference import postprocess
from agmr_jax.inference.postprocess import PostProcess


class Tally:
  """Per-case DSC of every candidate, accumulated one case at a time (volumes are not kept)."""

  def __init__(self, candidates: Sequence[PostProcess]):
    if not candidates:
      raise ValueError('no post-processing candidates')
    self.candidates = list(candidates)
    self.scores: list[list[float]] = [[] for _ in self.candidates]

  def add(self, probs: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> None:
    truth = np.asarray(truth, bool)
    for pp, scores in zip(self.candidates, self.scores):
      scores.append(metrics.dsc(pp(probs, spacing), truth))

  def means(self) -> list[float]:
    if not self.scores[0]:
      raise ValueError('no cases were added')
    return [float(np.mean(s)) for s in self.scores]

  def best(self) -> tuple[PostProcess, float]:
    """The candidate with the highest mean DSC. Ties go to the earliest candidate in the order
    of `_preference`: the plain 0.5 threshold first, then thresholds nearer 0.5, then smaller
    minimum volumes, so nothing is changed that the validation cases do not ask for."""
    means = self.means()
    order = sorted(range(len(self.candidates)), key=lambda i: _preference(self.candidates[i]))
    i = max(order, key=lambda k: (means[k], -order.index(k)))
    return self.candidates[i], means[i]


def _preference(pp: PostProcess) -> tuple[float, float]:
  return abs(pp.threshold - 0.5), pp.min_component_mm3


def tune_postprocess(workdir, config=None, *, checkpoint: str = 'best') -> dict | None:
  """Chooses the run's post-processing on its validation split; writes postprocess.json.

  Every candidate of postprocess.grid() is scored by mean per-case DSC in the source geometry;
  the best one (ties: the plain 0.5 threshold first) is saved with the scores of all of them.
  Returns the saved payload, or None when the run has no validation split.
  """
  workdir = pathlib.Path(workdir)
  config = config or runs.load_config(workdir)
  if config.data.val_fold < 0:
    return None
  dataset, folds = evaluate.open_splits(config, workdir)
  predictor, variables, step = loading.load_predictor(
      workdir, config, data.recipe_of(dataset), checkpoint=checkpointing.parse_checkpoint(checkpoint))
  tally = Tally(postprocess.grid())
  for _, probs, truth, geometry in evaluate.source_volumes(predictor, variables, dataset,
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
