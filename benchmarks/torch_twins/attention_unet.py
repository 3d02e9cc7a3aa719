"""PyTorch twin of agmr_jax.models.attention_unet (Oktay et al., 2018).

The U-Net twin with an additive attention gate on every skip:
  q = ReLU(W_x *_{2x2, s2} x + W_g *_{1x1} g + b_g)
  alpha = sigmoid(psi *_{1x1} q + b_psi)                 (B, 1, H/2, W/2)
  y = BN(W_out *_{1x1} (up_bilinear(alpha) * x))          (B, C, H, W)
x: skip (B, C, H, W); g: the coarser decoder feature (B, C_g, H/2, W/2).
"""

import torch
from torch import nn
import torch.nn.functional as F

from agmr_jax.models import attention_unet as flax_attention_unet
from benchmarks.torch_twins import layers
from benchmarks.torch_twins import unet


class AttentionGate(nn.Module):
  """Children '0_theta_x', '1_phi_g', '2_psi', '3_out' as in the Flax gate."""

  def __init__(self, skip_channels: int, gating_channels: int, inter_features: int | None = None):
    super().__init__()
    inter = inter_features or max(1, skip_channels // 2)
    self.add_module('0_theta_x', nn.Conv2d(skip_channels, inter, 2, stride=2, bias=False))
    self.add_module('1_phi_g', nn.Conv2d(gating_channels, inter, 1))
    self.add_module('2_psi', nn.Conv2d(inter, 1, 1))
    self.add_module('3_out', layers.ConvBNReLU(skip_channels, skip_channels, kernel_size=1,
                                               activation=False))

  def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    m = self._modules
    q = F.relu(m['0_theta_x'](x) + m['1_phi_g'](g))
    psi = m['2_psi'](q).float()
    alpha = layers.upsample_2x(torch.sigmoid(psi), 'bilinear')
    return m['3_out']((alpha * x.float()).to(x.dtype))


GATE_TWINS = {flax_attention_unet.AttentionGate: AttentionGate}


def build(model, in_channels: int, *, image_size=None) -> unet.UNet:
  """Twin of a Flax `AttentionUNet` (any UNet whose skip_gate is an AttentionGate)."""
  del image_size  # no parameter depends on the input size.
  gate = layers.twin_factory(model.skip_gate, GATE_TWINS, 'skip_gate')
  if gate is None:
    raise NotImplementedError('attention_unet twin: the Flax model has no skip_gate')
  return unet.UNet(**unet.unet_kwargs(model, in_channels), skip_gate=gate)
