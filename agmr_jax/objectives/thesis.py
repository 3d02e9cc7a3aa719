"""Objectives of the cross-attention U-Net thesis (seed 003, sec. 4.2-4.4 and 5.2-5.3).

Deep supervision (sec. 4.2, 5.2). With k estimations coarse to fine (the model's
`outputs['deep_supervision']` followed by `outputs['logits']`), each compared to the
full-resolution mask:

  L_total = sum_i W_i L_i,    W = (0.03, 0.045, 0.05, 0.125, 0.25, 0.5)

A model without auxiliary heads (the thesis's U-Net and U-Net + CW rows) is trained on
L_final alone, with weight 1.

Class weight maps (sec. 4.3). w_ij = C[y_ij], and

  L(y, y_hat, w) = 1 / (H W) sum_ij w_ij l_ij

(divided by the pixel count, not by sum(w): losses.py's 'pixels' convention).

  MRI (`thesis_focal`): sigmoid head, l = focal loss, C = (0.3, 0.7) for
    (background, lesion). The thesis does not give gamma; 2 is Lin et al.'s default.
  CT (`thesis_ce`): softmax head over (background, lesion, contour) with the recipe's
    0/1/2 masks (recipes.lesion_contour), l = cross-entropy, C = (0.7, 2.0, 7.0).
    A 2-class head reads the mask as binary (contour -> lesion) with the first two weights.

`class_weights=None` switches the maps off (every w_ij = 1). Metrics: 'dice' (hard Dice of
the final head, lesion = any non-background class) and 'loss_final' (L_final, unweighted by W).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from agmr_jax.objectives import common
from agmr_jax.objectives import losses

DS_WEIGHTS = (0.03, 0.045, 0.05, 0.125, 0.25, 0.5)
MRI_CLASS_WEIGHTS = (0.3, 0.7)
CT_CLASS_WEIGHTS = (0.7, 2.0, 7.0)

HeadLoss = Callable[[jax.Array], jax.Array]


def estimations(outputs: dict) -> list[jax.Array]:
  """All of a model's full-resolution logits, coarse to fine, the final head last."""
  return [*outputs.get('deep_supervision', ()), outputs['logits']]


def deep_supervision_loss(outputs: dict, head_loss: HeadLoss,
                          weights: Sequence[float] = DS_WEIGHTS) -> tuple[jax.Array, jax.Array]:
  """sum_i W_i head_loss(logits_i) over the estimations; (total (B,), final head's (B,)).

  Raises:
    ValueError: if there are auxiliary heads and their count + 1 differs from len(weights).
  """
  heads = estimations(outputs)
  final = head_loss(heads[-1])
  if len(heads) == 1:
    return final, final
  if len(heads) != len(weights):
    raise ValueError(f'{len(heads)} estimations (deep supervision + final) but '
                     f'{len(weights)} deep-supervision weights {tuple(weights)}')
  total = weights[-1] * final
  for w, logits in zip(weights[:-1], heads[:-1]):
    total = total + w * head_loss(logits)
  return total, final


def _metrics(outputs: dict, batch: dict, final: jax.Array) -> dict:
  target = (batch['mask'] > 0).astype(jnp.float32)
  return {'dice': common.hard_dice(outputs['logits'], target), 'loss_final': jnp.mean(final)}


def thesis_focal(outputs: dict, batch: dict, *,
                 class_weights: Sequence[float] | None = MRI_CLASS_WEIGHTS,
                 gamma: float = 2.0, ds_weights: Sequence[float] = DS_WEIGHTS):
  """MRI: deep-supervised sigmoid focal loss with a class weight map (0.3 / 0.7)."""
  target = (batch['mask'] > 0).astype(jnp.float32)
  weight_map = None if class_weights is None else losses.class_weight_map(target, class_weights)

  def head_loss(logits):
    if logits.shape[-1] != 1:
      raise ValueError(f'thesis_focal needs a 1-class (sigmoid) head, got logits {logits.shape}')
    return losses.sigmoid_focal_loss(logits, target, alpha=None, gamma=gamma,
                                     weights=None if weight_map is None else weight_map[..., None])

  total, final = deep_supervision_loss(outputs, head_loss, ds_weights)
  return total, _metrics(outputs, batch, final)


def thesis_ce(outputs: dict, batch: dict, *,
              class_weights: Sequence[float] | None = CT_CLASS_WEIGHTS,
              ds_weights: Sequence[float] = DS_WEIGHTS):
  """CT: deep-supervised softmax cross-entropy over (background, lesion, contour)."""
  num_classes = outputs['logits'].shape[-1]
  labels = jnp.asarray(batch['mask']).astype(jnp.int32)
  if num_classes == 2:
    labels = jnp.minimum(labels, 1)
  elif num_classes != 3:
    raise ValueError(f'thesis_ce needs a 2- or 3-class head, got logits {outputs["logits"].shape}')
  weights = None if class_weights is None else tuple(class_weights)[:num_classes]

  def head_loss(logits):
    return losses.softmax_ce(logits, labels, class_weights=weights, normalize='pixels')

  total, final = deep_supervision_loss(outputs, head_loss, ds_weights)
  return total, _metrics(outputs, batch, final)
