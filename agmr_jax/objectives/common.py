"""What every objective shares: the binary lesion target, the hard-Dice progress metric, and the
plain objectives (D-UNet's mix, soft Dice, BCE + Dice).

An objective maps (model outputs, batch) to (per-example loss (B,), scalar metrics).
"""

import jax
import jax.numpy as jnp

from agmr_jax.objectives import losses


def binary_target(batch: dict) -> jax.Array:
  """Lesion (any non-zero label, contour included) as float (B, H, W)."""
  return (batch['mask'] > 0).astype(jnp.float32)


def hard_dice(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean over the batch of the per-slice Dice of thresholded predictions (a progress signal)."""
  if logits.shape[-1] == 1:
    pred = (logits[..., 0] > 0).astype(jnp.float32)
  else:
    pred = (jnp.argmax(logits, axis=-1) > 0).astype(jnp.float32)
  inter = jnp.sum(pred * target, axis=(1, 2))
  total = jnp.sum(pred, axis=(1, 2)) + jnp.sum(target, axis=(1, 2))
  return jnp.mean(jnp.where(total > 0, 2 * inter / jnp.maximum(total, 1), 1.0))


def dunet_mix(outputs: dict, batch: dict, *, alpha: float = 0.48, gamma: float = 1.1,
              smooth: float = 1.0, dice_pooling: str = 'example'):
  """D-UNet's enhanced mixing loss: focal - log(soft Dice)."""
  target = binary_target(batch)
  logits = outputs['logits']
  loss = losses.dunet_loss(logits, target, alpha=alpha, gamma=gamma, smooth=smooth,
                           dice_pooling=dice_pooling)
  return loss, {'dice': hard_dice(logits, target)}


def soft_dice(outputs: dict, batch: dict, *, smooth: float = 1.0, dice_pooling: str = 'example'):
  """1 - soft Dice (squared sums), CLCI-Net's loss; per example or pooled over the batch."""
  target = binary_target(batch)
  logits = outputs['logits']
  loss = losses.dice_loss(logits, target, smooth=smooth, squared=True, pooling=dice_pooling)
  return loss, {'dice': hard_dice(logits, target)}


def bce_dice(outputs: dict, batch: dict, *, smooth: float = 1.0, bce_weight: float = 1.0):
  """Binary cross-entropy + (1 - soft Dice): a common baseline objective."""
  target = binary_target(batch)
  logits = outputs['logits']
  loss = bce_weight * losses.sigmoid_bce(logits, target) + losses.dice_loss(
      logits, target, smooth=smooth)
  return loss, {'dice': hard_dice(logits, target)}
