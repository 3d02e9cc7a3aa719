"""AGMR-Net's training objective (Sec. 4.4, Eqs. 12-15).

  L_1   = Focal(p, g) - log(Dice(p, g))                 D-UNet's enhanced mixing loss   (Eq. 12)
  L_2   = Sobel(p, g)                                   boundary loss                   (Eq. 13)
  L_3-i = BCE(cp, cg_i),  i = 1..5                      CPA supervision                 (Eq. 14)
  L     = L_1 + L_2 + 0.15 sum_i L_3-i                                                  (Eq. 15)

p = sigmoid(logits), g the binary mask (lesion = any non-zero label). Focal: alpha 0.48 on
lesion pixels, gamma 1.1; Dice: squared sums, smoothing 1 (losses.dunet_loss, whose docstring
fixes the conventions; `dice_pooling='batch'` pools the Dice over the batch as the Keras
reference does). cg_i = sigmoid of CPA stage i's 6x6 logits, cp = the prior map (the
mask max-pooled over the same patch grid, models/cpa.prior_map); BCE is the mean over the 36
patches, computed from logits.

Sobel loss. The paper cites a Sobel loss without its form. Here: the Sobel gradient magnitude
|S(x)| = sqrt((S_x * x)^2 + (S_y * x)^2 + eps) of the probability map and of the mask (3x3 Sobel
kernels, zero padding), compared per pixel by L1 (default) or L2 and averaged over the slice.
eps = 1e-6 keeps the gradient of the square root finite where both are flat; the sqrt(eps)
floor is the same in both maps and cancels.

Everything is per example ((B,) float32); metrics are batch means of every term, so that the
CPA maps converging toward the prior maps shows as 'cpa_bce' falling (and per stage as
'cpa_bce_1' .. 'cpa_bce_5'). Models without CPA outputs (attention='fa' / 'none') train on
L_1 + L_2 alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agmr_jax.objectives import common
from agmr_jax.objectives import losses
from agmr_jax.models.cpa import prior_map

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], np.float32)
SOBEL_EPS = 1e-6


def sobel_magnitude(x: jax.Array) -> jax.Array:
  """(B, H, W) -> (B, H, W) float32 Sobel gradient magnitude (zero padding)."""
  kernel = jnp.asarray(np.stack([SOBEL_X, SOBEL_X.T], axis=-1)[:, :, None, :])  # HWIO
  g = jax.lax.conv_general_dilated(
      x.astype(jnp.float32)[..., None], kernel, window_strides=(1, 1), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sqrt(jnp.sum(g * g, axis=-1) + SOBEL_EPS)


def sobel_loss(logits: jax.Array, target: jax.Array, *, norm: str = 'l1') -> jax.Array:
  """Mean over pixels of |S(sigmoid(logits))| vs |S(target)|: (B,). logits (B, H, W, 1)."""
  if logits.shape[-1] != 1:
    raise ValueError(f'sobel_loss needs a sigmoid head (B, H, W, 1), got {logits.shape}')
  diff = (sobel_magnitude(jax.nn.sigmoid(logits[..., 0].astype(jnp.float32)))
          - sobel_magnitude(target))
  if norm == 'l1':
    per_pixel = jnp.abs(diff)
  elif norm == 'l2':
    per_pixel = diff * diff
  else:
    raise ValueError(f"sobel norm must be 'l1' or 'l2', got {norm!r}")
  return jnp.mean(per_pixel, axis=(1, 2))


def cpa_bce(cpa_logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-stage BCE between CPA maps and the prior map: (B, L, G, G), (B, H, W) -> (B, L)."""
  grid = cpa_logits.shape[-1]
  if cpa_logits.ndim != 4 or cpa_logits.shape[-2] != grid:
    raise ValueError(f'cpa_logits must be (B, L, G, G), got {cpa_logits.shape}')
  prior = prior_map(mask, grid)[:, None]
  bce = optax.sigmoid_binary_cross_entropy(cpa_logits.astype(jnp.float32),
                                           jnp.broadcast_to(prior, cpa_logits.shape))
  return jnp.mean(bce, axis=(2, 3))


def agmr_loss(outputs: dict, batch: dict, *, alpha: float = 0.48, gamma: float = 1.1,
              smooth: float = 1.0, sobel_weight: float = 1.0, sobel_norm: str = 'l1',
              cpa_weight: float = 0.15, dice_pooling: str = 'example') -> tuple[jax.Array, dict]:
  """Eq. 15 per example, plus each term as a metric."""
  target = (batch['mask'] > 0).astype(jnp.float32)
  logits = outputs['logits']
  focal = losses.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma)
  log_dice = losses.log_dice_loss(logits, target, smooth=smooth, squared=True,
                                  pooling=dice_pooling)
  sobel = sobel_loss(logits, target, norm=sobel_norm)
  total = focal + log_dice + sobel_weight * sobel
  metrics = {'dice': common.hard_dice(logits, target), 'focal': jnp.mean(focal),
             'log_dice': jnp.mean(log_dice), 'sobel': jnp.mean(sobel)}
  if 'cpa_logits' in outputs:
    stages = cpa_bce(outputs['cpa_logits'], target)
    total = total + cpa_weight * jnp.sum(stages, axis=1)
    metrics['cpa_bce'] = jnp.mean(jnp.sum(stages, axis=1))
    for i in range(stages.shape[1]):
      metrics[f'cpa_bce_{i + 1}'] = jnp.mean(stages[:, i])
  return total, metrics
