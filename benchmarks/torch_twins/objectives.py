"""PyTorch twins of agmr_jax.objectives: (outputs, batch) -> per-example loss (B,).

Same formulas and reductions as agmr_jax.losses, in float32 with autocast off
(the JAX losses are float32 whatever the compute dtype). `outputs['logits']` is
NCHW (B, K, H, W); `batch['mask']` is (B, H, W) integer. Only the loss is
returned: the JAX objectives' extra metrics (a thresholded Dice) are part of the
project's train step and stay in the JAX timing (a few elementwise ops).
"""

from collections.abc import Callable
from collections.abc import Sequence
import functools

import torch
import torch.nn.functional as F


def _binary(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """(B, 1, H, W) logits and (B, H, W) mask -> float32 (B, H, W) logits and lesion target."""
  if logits.shape[1] != 1:
    raise ValueError(f'binary objective wants one logit channel, got {tuple(logits.shape)}')
  return logits[:, 0].float(), (mask > 0).float()


def _pixel_mean(x: torch.Tensor) -> torch.Tensor:
  return x.flatten(1).mean(1)


def soft_dice_coef(p: torch.Tensor, g: torch.Tensor, smooth: float = 1.0,
                   squared: bool = True) -> torch.Tensor:
  """(2 sum(p g) + s) / (sum(p^2) + sum(g^2) + s) per example (plain sums if not squared)."""
  p, g = p.flatten(1), g.flatten(1)
  denom = (p * p).sum(1) + (g * g).sum(1) if squared else p.sum(1) + g.sum(1)
  return (2.0 * (p * g).sum(1) + smooth) / (denom + smooth)


def sigmoid_focal(z: torch.Tensor, y: torch.Tensor, alpha: float | None,
                  gamma: float) -> torch.Tensor:
  """Pixel mean of -alpha_t (1 - p_t)^gamma log p_t for 0/1 targets: (B,).

  (1 - p_t)^gamma is computed as exp(gamma log(1 - p_t)), as optax does.
  """
  ce = F.binary_cross_entropy_with_logits(z, y, reduction='none')
  # 1 - p_t = sigmoid(-z) on lesion pixels, sigmoid(z) elsewhere.
  log_one_minus_pt = torch.where(y > 0, F.logsigmoid(-z), F.logsigmoid(z))
  loss = ce * torch.exp(gamma * log_one_minus_pt)
  if alpha is not None:
    loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
  return _pixel_mean(loss)


def dunet_mix(outputs: dict, batch: dict, *, alpha: float = 0.48, gamma: float = 1.1,
              smooth: float = 1.0) -> torch.Tensor:
  """focal(alpha, gamma) - log(soft Dice, squared sums): D-UNet's enhanced mixing loss."""
  z, y = _binary(outputs['logits'], batch['mask'])
  with torch.autocast(device_type=z.device.type, enabled=False):
    return sigmoid_focal(z, y, alpha, gamma) - torch.log(
        soft_dice_coef(torch.sigmoid(z), y, smooth))


def soft_dice(outputs: dict, batch: dict, *, smooth: float = 1.0) -> torch.Tensor:
  """1 - soft Dice (squared sums): CLCI-Net's loss."""
  z, y = _binary(outputs['logits'], batch['mask'])
  with torch.autocast(device_type=z.device.type, enabled=False):
    return 1.0 - soft_dice_coef(torch.sigmoid(z), y, smooth)


def bce_dice(outputs: dict, batch: dict, *, smooth: float = 1.0,
             bce_weight: float = 1.0) -> torch.Tensor:
  """bce_weight * BCE + (1 - soft Dice, squared sums as losses.dice_loss's default)."""
  z, y = _binary(outputs['logits'], batch['mask'])
  with torch.autocast(device_type=z.device.type, enabled=False):
    bce = _pixel_mean(F.binary_cross_entropy_with_logits(z, y, reduction='none'))
    return bce_weight * bce + 1.0 - soft_dice_coef(torch.sigmoid(z), y, smooth)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
  """(B, H, W) -> sqrt((S_x * x)^2 + (S_y * x)^2 + 1e-6), zero padding (objectives_agmr)."""
  sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
  g = F.conv2d(x[:, None].float(), torch.stack([sx, sx.T])[:, None], padding=1)
  return torch.sqrt((g * g).sum(1) + 1e-6)


def agmr(outputs: dict, batch: dict, *, alpha: float = 0.48, gamma: float = 1.1,
         smooth: float = 1.0, sobel_weight: float = 1.0, sobel_norm: str = 'l1',
         cpa_weight: float = 0.15) -> torch.Tensor:
  """AGMR-Net's Eq. 15: focal - log Dice + Sobel + cpa_weight * sum_stages BCE(CPA, prior).

  The prior map is the lesion mask max-pooled over the CPA grid: torch's adaptive
  max pooling has the patch bounds of cpa.prior_map.
  """
  if sobel_norm not in ('l1', 'l2'):
    raise ValueError(f"sobel norm must be 'l1' or 'l2', got {sobel_norm!r}")
  z, y = _binary(outputs['logits'], batch['mask'])
  with torch.autocast(device_type=z.device.type, enabled=False):
    total = sigmoid_focal(z, y, alpha, gamma) - torch.log(
        soft_dice_coef(torch.sigmoid(z), y, smooth))
    diff = sobel_magnitude(torch.sigmoid(z)) - sobel_magnitude(y)
    total = total + sobel_weight * _pixel_mean(diff.abs() if sobel_norm == 'l1' else diff * diff)
    if 'cpa_logits' in outputs:
      cpa = outputs['cpa_logits'].float()
      prior = F.adaptive_max_pool2d(y[:, None], cpa.shape[-1]).expand_as(cpa)
      bce = F.binary_cross_entropy_with_logits(cpa, prior, reduction='none')
      total = total + cpa_weight * bce.mean(dim=(2, 3)).sum(1)
  return total


def _masked_gap(features: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
  """Mean of features (B, C, H, W) over the pixels where keep (B, H, W) is 1: (B, C)."""
  total = (features.float() * keep[:, None]).sum((2, 3))
  return total / keep.sum((1, 2)).clamp(min=1.0)[:, None]


def mdanet_similarity(f1: torch.Tensor, f2: torch.Tensor, lesion: torch.Tensor, *,
                      eps: float = 1e-8) -> torch.Tensor:
  """1 - cos of the lesion-masked GAP of both groups' features; 0 where all is lesion."""
  keep = 1.0 - (lesion > 0).float()
  a, b = _masked_gap(f1, keep), _masked_gap(f2, keep)
  cos = (a * b).sum(-1) / (a.norm(dim=-1).clamp(min=eps) * b.norm(dim=-1).clamp(min=eps))
  return torch.where(keep.sum((1, 2)) > 0, 1.0 - cos, torch.zeros_like(cos))


def mdanet(outputs: dict, batch: dict, *, lam: float = 1.0, smooth: float = 1.0) -> torch.Tensor:
  """MDANet's Eq. 9: 1 - Dice (plain sums) + CE + lam * masked similarity (objectives_mdanet).

  Sigmoid BCE for one logit channel; softmax CE against the binary lesion target and Dice of
  1 - p(background) for several.
  """
  logits = outputs['logits']
  y = (batch['mask'] > 0).float()
  with torch.autocast(device_type=y.device.type, enabled=False):
    if logits.shape[1] == 1:
      z = logits[:, 0].float()
      ce = F.binary_cross_entropy_with_logits(z, y, reduction='none')
      lesion_prob = torch.sigmoid(z)
    else:
      ce = F.cross_entropy(logits.float(), y.long(), reduction='none')
      lesion_prob = 1.0 - torch.softmax(logits.float(), dim=1)[:, 0]
    total = 1.0 - soft_dice_coef(lesion_prob, y, smooth, squared=False) + _pixel_mean(ce)
    if lam:
      if 'group_features' not in outputs:
        raise ValueError("mdanet loss with lam != 0 needs the model's 'group_features' output")
      total = total + lam * mdanet_similarity(*outputs['group_features'], y)
  return total


DS_WEIGHTS = (0.03, 0.045, 0.05, 0.125, 0.25, 0.5)


def _deep_supervision(outputs: dict, head_loss, weights: Sequence[float]) -> torch.Tensor:
  """sum_i W_i head_loss(logits_i), coarse to fine, final head last (objectives_thesis)."""
  heads = [*outputs.get('deep_supervision', ()), outputs['logits']]
  if len(heads) == 1:
    return head_loss(heads[0])
  if len(heads) != len(weights):
    raise ValueError(f'{len(heads)} estimations but {len(weights)} deep-supervision weights')
  return sum(w * head_loss(logits) for w, logits in zip(weights, heads))


def thesis_focal(outputs: dict, batch: dict, *,
                 class_weights: Sequence[float] | None = (0.3, 0.7), gamma: float = 2.0,
                 ds_weights: Sequence[float] = DS_WEIGHTS) -> torch.Tensor:
  """Deep-supervised sigmoid focal loss (no alpha) times a class weight map, pixel mean."""
  y = (batch['mask'] > 0).float()
  w = None if class_weights is None else torch.tensor(class_weights, device=y.device)[y.long()]

  def head_loss(logits):
    z, _ = _binary(logits, batch['mask'])
    ce = F.binary_cross_entropy_with_logits(z, y, reduction='none')
    loss = ce * torch.exp(gamma * torch.where(y > 0, F.logsigmoid(-z), F.logsigmoid(z)))
    return _pixel_mean(loss if w is None else w * loss)
  with torch.autocast(device_type=y.device.type, enabled=False):
    return _deep_supervision(outputs, head_loss, ds_weights)


def thesis_ce(outputs: dict, batch: dict, *,
              class_weights: Sequence[float] | None = (0.7, 2.0, 7.0),
              ds_weights: Sequence[float] = DS_WEIGHTS) -> torch.Tensor:
  """Deep-supervised softmax CE over (background, lesion, contour), w[label] / pixel count."""
  num_classes = outputs['logits'].shape[1]
  labels = batch['mask'].long()
  if num_classes == 2:
    labels = labels.clamp(max=1)
  w = None
  if class_weights is not None:
    w = torch.tensor(tuple(class_weights)[:num_classes], device=labels.device)[labels]

  def head_loss(logits):
    ce = F.cross_entropy(logits.float(), labels, reduction='none')
    return _pixel_mean(ce if w is None else w * ce)
  with torch.autocast(device_type=labels.device.type, enabled=False):
    return _deep_supervision(outputs, head_loss, ds_weights)


OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    'thesis_focal': thesis_focal,
    'thesis_ce': thesis_ce,
    'agmr': agmr,
    'dunet_mix': dunet_mix,
    'soft_dice': soft_dice,
    'bce_dice': bce_dice,
    'mdanet': mdanet,
}


def make_objective(name: str, **kwargs) -> Callable[[dict, dict], torch.Tensor]:
  if name not in OBJECTIVES:
    raise NotImplementedError(f'no PyTorch twin of objective {name!r}; '
                              f'known: {", ".join(sorted(OBJECTIVES))}')
  return functools.partial(OBJECTIVES[name], **kwargs)
