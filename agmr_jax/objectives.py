"""Training objectives: model outputs + batch -> per-example loss and scalar metrics.

An objective binds a loss from losses.py to the outputs a model returns (logits plus any
auxiliary outputs) and to the batch's mask. `OBJECTIVES` is the one registry; configs name an
entry and give its keyword arguments (`config.loss.name`, `config.loss.kwargs`).
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from agmr_jax import losses
from agmr_jax import objectives_agmr
from agmr_jax import objectives_mdanet
from agmr_jax import objectives_thesis

Objective = Callable[[dict, dict], tuple[jax.Array, dict]]


def _binary_target(batch: dict) -> jax.Array:
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
  target = _binary_target(batch)
  logits = outputs['logits']
  loss = losses.dunet_loss(logits, target, alpha=alpha, gamma=gamma, smooth=smooth,
                           dice_pooling=dice_pooling)
  return loss, {'dice': hard_dice(logits, target)}


def soft_dice(outputs: dict, batch: dict, *, smooth: float = 1.0, dice_pooling: str = 'example'):
  """1 - soft Dice (squared sums), CLCI-Net's loss; per example or pooled over the batch."""
  target = _binary_target(batch)
  logits = outputs['logits']
  loss = losses.dice_loss(logits, target, smooth=smooth, squared=True, pooling=dice_pooling)
  return loss, {'dice': hard_dice(logits, target)}


def bce_dice(outputs: dict, batch: dict, *, smooth: float = 1.0, bce_weight: float = 1.0):
  """Binary cross-entropy + (1 - soft Dice): a common baseline objective."""
  target = _binary_target(batch)
  logits = outputs['logits']
  loss = bce_weight * losses.sigmoid_bce(logits, target) + losses.dice_loss(
      logits, target, smooth=smooth)
  return loss, {'dice': hard_dice(logits, target)}


OBJECTIVES: dict[str, Callable[..., tuple[jax.Array, dict]]] = {
    'dunet_mix': dunet_mix,
    'agmr': objectives_agmr.agmr_loss,
    'soft_dice': soft_dice,
    'bce_dice': bce_dice,
    'mdanet': functools.partial(objectives_mdanet.mdanet_loss, hard_dice=hard_dice),
    'thesis_focal': objectives_thesis.thesis_focal,
    'thesis_ce': objectives_thesis.thesis_ce,
}


def make_objective(name: str, **kwargs) -> Objective:
  if name not in OBJECTIVES:
    raise ValueError(f'unknown loss {name!r}; known: {", ".join(sorted(OBJECTIVES))}')
  return functools.partial(OBJECTIVES[name], **kwargs)
