"""MDANet's objective (Zhang et al. 2024, Sec. 3.4): Dice + CE + lambda * masked similarity.

    L = L_dice + L_ce + lambda * L_similarity                              (9), (10)
    L_similarity = 1 - <a, b> / (|a| |b|)                                  (8)
    a = sum_p (1 - y_p) F_1[p] / sum_p (1 - y_p),  b likewise from F_2

F_1, F_2 (B, H, W, C) are the two modality groups' first-stage features (MDANet's
out['group_features']), y the lesion mask: lesion pixels are masked out and the rest global-average
pooled, so only the healthy tissue of the two groups is pulled together (the lesion is where they
are meant to differ). A slice that is all lesion has nothing to align and contributes 0.

L_dice = 1 - soft Dice with plain sums and smoothing 1 (Eq. 11 has no squares); L_ce is the
per-pixel cross-entropy (sigmoid BCE for a 1-channel head, softmax CE for 2 classes). All values
per example (B,), in float32. lambda = 1 in the paper (Table 6 tries 0.25 .. 1).
"""

import jax
import jax.numpy as jnp

from agmr_jax.objectives import losses


def masked_gap(features: jax.Array, keep: jax.Array) -> jax.Array:
  """Average of features (B, H, W, C) over the pixels where keep (B, H, W) is 1 -> (B, C)."""
  if features.shape[:3] != keep.shape:
    raise ValueError(f'features {features.shape} and mask {keep.shape} differ in size')
  f = features.astype(jnp.float32)
  total = jnp.sum(f * keep[..., None], axis=(1, 2))
  return total / jnp.maximum(jnp.sum(keep, axis=(1, 2)), 1.0)[:, None]


def similarity_loss(f1: jax.Array, f2: jax.Array, lesion: jax.Array, *,
                    eps: float = 1e-8) -> jax.Array:
  """Eq. (8) on lesion-masked GAP vectors; (B,) float32, 0 where no pixel is kept.

  Args:
    f1, f2: the groups' features (B, H, W, C).
    lesion: (B, H, W), 1 on lesion pixels (excluded), 0 elsewhere.
    eps: floor of the vector norms (an all-zero feature gives similarity 0, loss 1).
  """
  keep = 1.0 - (lesion > 0).astype(jnp.float32)
  a, b = masked_gap(f1, keep), masked_gap(f2, keep)
  cos = jnp.sum(a * b, axis=-1) / (
      jnp.maximum(jnp.linalg.norm(a, axis=-1), eps) * jnp.maximum(jnp.linalg.norm(b, axis=-1), eps))
  return jnp.where(jnp.sum(keep, axis=(1, 2)) > 0, 1.0 - cos, 0.0)


def segmentation_loss(logits: jax.Array, target: jax.Array, *,
                      smooth: float = 1.0) -> jax.Array:
  """L_dice + L_ce (Eqs. 10-12) for a sigmoid (1 channel) or softmax (K channels) head: (B,)."""
  if logits.shape[-1] == 1:
    return (losses.dice_loss(logits, target, smooth=smooth, squared=False)
            + losses.sigmoid_bce(logits, target))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  lesion_prob = 1.0 - probs[..., 0]
  dice = losses.soft_dice(lesion_prob, target, smooth=smooth, squared=False)
  return 1.0 - dice + losses.softmax_ce(logits, target.astype(jnp.int32))


def mdanet_loss(outputs: dict, batch: dict, *, lam: float = 1.0, smooth: float = 1.0,
                hard_dice=None):
  """Eq. (9) per example, with metrics {'dice', 'segment', 'similarity'}.

  Args:
    outputs: 'logits' (B, H, W, K) and, when lam != 0, 'group_features' (F_1, F_2).
    batch: 'mask' (B, H, W), any non-zero label is lesion.
    lam: weight of the similarity loss (0: the segmentation loss alone, any model).
    smooth: Dice smoothing.
    hard_dice: fn(logits, target) -> scalar progress metric (objectives.hard_dice).
  """
  target = (batch['mask'] > 0).astype(jnp.float32)
  logits = outputs['logits']
  segment = segmentation_loss(logits, target, smooth=smooth)
  metrics = {'segment': jnp.mean(segment)}
  loss = segment
  if lam:
    if 'group_features' not in outputs:
      raise ValueError("mdanet loss with lam != 0 needs the model's 'group_features' output")
    similarity = similarity_loss(*outputs['group_features'], target)
    loss = segment + lam * similarity
    metrics['similarity'] = jnp.mean(similarity)
  if hard_dice is not None:
    metrics['dice'] = hard_dice(logits, target)
  return loss, metrics
