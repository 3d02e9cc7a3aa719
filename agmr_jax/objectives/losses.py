"""Segmentation losses: logits in, one value per example out.

Every loss takes pre-activation logits `(B, H, W, C)` (C = 1 for sigmoid heads) and returns a
float32 array of shape `(B,)`; reduction over the batch is the caller's (`reduce_loss`). All
arithmetic is done in float32, whatever the logits' dtype (bf16 compute stays out of the loss).

Binary targets may be `(B, H, W)` or `(B, H, W, 1)`; they are matched to the logits' shape.
Per-pixel losses are averaged over every non-batch axis; with per-pixel weights `w` the value is
`sum(w * l) / num_pixels` (Keras's `sample_weight` convention), not `sum(w * l) / sum(w)`
(PyTorch's `CrossEntropyLoss(weight=...)`); `softmax_ce(..., normalize='weights')` gives the latter.

Focal alpha convention. optax's `sigmoid_focal_loss` weights positives by `alpha` and negatives by
`1 - alpha`. The D-UNet public Keras code (SZUHvern/D-UNet, Statistics.py, `EML`) computes
`-mean(alpha * (1 - pt_1)**gamma * log(pt_1)) - mean((1 - alpha) * pt_0**gamma * log(1 - pt_0))`
with `pt_1 = p` on lesion pixels and `pt_0 = p` on background, alpha 0.48, gamma 1.1: positives
weighted by alpha as well, each term a mean over all pixels. So the mapping is the identity:
optax alpha = 0.48. The cross-attention U-Net's class weight map (0.3 background, 0.7 lesion) on a
focal loss is the same thing as alpha = 0.7.

Dice pooling. Keras flattens the whole batch, so the EML's Dice is pooled over the batch: one
Dice of all the batch's pixels. `dice_pooling='batch'` does the same (under data parallelism the
batch is the global one, so the value does not depend on the device count) and returns that value
for every example, so the caller's mean is it; `'example'` is one Dice per slice. They differ
most on slices without lesion: per example, such a slice's Dice is s / (sum(p^2) + s), and
-log of it pulls every probability on every empty slice towards 0 as hard as a lesion slice
pulls towards its lesion, which slows learning of small lesions. The focal term is the same
either way after a mean over the batch. Keras also clips probabilities at 1e-7; the log-space form here needs
no clipping.
"""

from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import optax

Axis = Optional[int | tuple[int, ...]]


def _f32(x) -> jax.Array:
  return jnp.asarray(x).astype(jnp.float32)


def _match_targets(logits: jax.Array, targets) -> jax.Array:
  """Gives binary targets the logits' shape ((B,H,W) -> (B,H,W,1)), as float32."""
  targets = _f32(targets)
  if targets.ndim == logits.ndim - 1 and logits.shape[-1] == 1:
    targets = targets[..., None]
  if targets.shape != logits.shape:
    raise ValueError(f'targets {targets.shape} do not match logits {logits.shape}')
  return targets


def _non_batch_axes(x: jax.Array) -> tuple[int, ...]:
  return tuple(range(1, x.ndim))


def _pixel_mean(values: jax.Array, weights=None) -> jax.Array:
  """sum(w * values) / num_pixels over every non-batch axis -> (B,)."""
  if weights is not None:
    values = values * jnp.broadcast_to(_f32(weights), values.shape)
  return jnp.mean(values, axis=_non_batch_axes(values))


def soft_dice(probs, targets, *, smooth: float = 1.0, squared: bool = True,
              axis: Axis = None) -> jax.Array:
  """Soft Dice coefficient per example.

  dice = (2 sum(p g) + s) / (sum(p^2) + sum(g^2) + s)   (squared=True, D-UNet / CLCI-Net)
  dice = (2 sum(p g) + s) / (sum(p) + sum(g) + s)       (squared=False)

  Args:
    probs: probabilities, (B, ...).
    targets: same shape as probs, values in [0, 1].
    smooth: s, added to numerator and denominator (an all-empty example has dice 1).
    squared: squares in the denominator.
    axis: axes summed over; None = every non-batch axis ((1, 2, 3) for NHWC).

  Returns:
    float32 (B,) (or whatever axes remain).
  """
  p, g = _f32(probs), _f32(targets)
  axis = _non_batch_axes(p) if axis is None else axis
  intersection = jnp.sum(p * g, axis=axis)
  if squared:
    denom = jnp.sum(p * p, axis=axis) + jnp.sum(g * g, axis=axis)
  else:
    denom = jnp.sum(p, axis=axis) + jnp.sum(g, axis=axis)
  return (2.0 * intersection + smooth) / (denom + smooth)


DICE_POOLINGS = ('example', 'batch')


def pooled_soft_dice(probs, targets, *, smooth: float = 1.0, squared: bool = True,
                     pooling: str = 'example') -> jax.Array:
  """soft_dice per example ('example') or over the whole batch ('batch', repeated B times): (B,)."""
  if pooling == 'example':
    return soft_dice(probs, targets, smooth=smooth, squared=squared)
  if pooling == 'batch':
    p = _f32(probs)
    dice = soft_dice(p, targets, smooth=smooth, squared=squared, axis=tuple(range(p.ndim)))
    return jnp.broadcast_to(dice, p.shape[:1])
  raise ValueError(f'dice pooling must be one of {DICE_POOLINGS}, got {pooling!r}')


def dice_loss(logits, targets, *, smooth: float = 1.0, squared: bool = True,
              pooling: str = 'example') -> jax.Array:
  """1 - soft Dice of sigmoid(logits) (binary head): (B,)."""
  logits = _f32(logits)
  targets = _match_targets(logits, targets)
  return 1.0 - pooled_soft_dice(jax.nn.sigmoid(logits), targets, smooth=smooth, squared=squared,
                                pooling=pooling)


def log_dice_loss(logits, targets, *, smooth: float = 1.0, squared: bool = True,
                  pooling: str = 'example') -> jax.Array:
  """-log(soft Dice of sigmoid(logits)): (B,). Finite: Dice >= s / (denominator + s) > 0."""
  logits = _f32(logits)
  targets = _match_targets(logits, targets)
  return -jnp.log(pooled_soft_dice(jax.nn.sigmoid(logits), targets, smooth=smooth,
                                   squared=squared, pooling=pooling))


def sigmoid_focal_loss(logits, targets, *, alpha: Optional[float] = None, gamma: float = 2.0,
                       weights=None) -> jax.Array:
  """Mean over pixels of optax.sigmoid_focal_loss: (B,).

  FL = -alpha_t (1 - p_t)^gamma log(p_t), alpha_t = alpha on lesion pixels, 1 - alpha on
  background (D-UNet's alpha 0.48 maps to alpha=0.48, see the module docstring); alpha=None
  leaves pixels unweighted. Optional per-pixel `weights` multiply before the mean.
  """
  logits = _f32(logits)
  targets = _match_targets(logits, targets)
  per_pixel = optax.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
  return _pixel_mean(per_pixel, weights)


def sigmoid_bce(logits, targets, *, weights=None) -> jax.Array:
  """Mean over pixels of optax.sigmoid_binary_cross_entropy, optionally weighted: (B,)."""
  logits = _f32(logits)
  targets = _match_targets(logits, targets)
  return _pixel_mean(optax.sigmoid_binary_cross_entropy(logits, targets), weights)


def class_weight_map(labels, weights: Sequence[float]) -> jax.Array:
  """Per-pixel weights `weights[label]`, float32, same shape as labels.

  Binary float masks work too (0.0 / 1.0 index weights[0] / weights[1]).
  """
  table = jnp.asarray(weights, jnp.float32)
  return jnp.take(table, jnp.asarray(labels).astype(jnp.int32), mode='clip')


def softmax_ce(logits, labels, *, class_weights: Optional[Sequence[float]] = None,
               normalize: str = 'pixels') -> jax.Array:
  """Softmax cross-entropy with integer labels, per example: (B,).

  Args:
    logits: (B, H, W, K).
    labels: int (B, H, W) (or (B, H, W, 1)), values in [0, K).
    class_weights: optional length-K weights w; pixel weight = w[label].
    normalize: 'pixels': sum(w * ce) / num_pixels (default; Keras sample_weight convention);
      'weights': sum(w * ce) / sum(w) (PyTorch CrossEntropyLoss(weight=w) per example).
  """
  logits = _f32(logits)
  labels = jnp.asarray(labels).astype(jnp.int32)
  if labels.ndim == logits.ndim and labels.shape[-1] == 1:
    labels = labels[..., 0]
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f'labels {labels.shape} do not match logits {logits.shape}')
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if class_weights is None:
    return _pixel_mean(ce)
  w = class_weight_map(labels, class_weights)
  if normalize == 'pixels':
    return _pixel_mean(ce, w)
  if normalize == 'weights':
    axes = _non_batch_axes(ce)
    return jnp.sum(w * ce, axis=axes) / jnp.maximum(jnp.sum(w, axis=axes), 1e-12)
  raise ValueError(f"normalize must be 'pixels' or 'weights', got {normalize!r}")


def dunet_loss(logits, targets, *, alpha: float = 0.48, gamma: float = 1.1,
               smooth: float = 1.0, dice_pooling: str = 'example') -> jax.Array:
  """D-UNet / AGMR-Net "enhanced mixing loss": focal - log(soft Dice), per example (B,).

  Focal: mean over pixels, alpha on lesion pixels; Dice: squared sums, smoothing `smooth`,
  per example or pooled over the batch (`dice_pooling`, module docstring).
  """
  focal = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
  return focal + log_dice_loss(logits, targets, smooth=smooth, squared=True, pooling=dice_pooling)


def reduce_loss(values, weights=None, reduction: str = 'mean') -> jax.Array:
  """Explicit reduction of per-example values.

  Args:
    values: (B,) (or any shape) per-example losses.
    weights: optional, broadcastable to values (e.g. 0 for padded examples).
    reduction: 'mean': sum(w v) / sum(w) (plain mean without weights; 0 when all weights are 0);
      'sum': sum(w v); 'none': w v.
  """
  values = _f32(values)
  w = jnp.ones_like(values) if weights is None else jnp.broadcast_to(_f32(weights), values.shape)
  if reduction == 'none':
    return values * w
  if reduction == 'sum':
    return jnp.sum(values * w)
  if reduction == 'mean':
    total = jnp.sum(w)
    return jnp.where(total > 0, jnp.sum(values * w) / jnp.where(total > 0, total, 1.0), 0.0)
  raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
