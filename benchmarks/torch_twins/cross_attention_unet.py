"""PyTorch twin of agmr_jax.models.cross_attention_unet (thesis, seed 003), NCHW.

Six levels 32..1024 of two 3x3 conv-BN-ReLU with 2x2 max-pool; five decoder
stages: u = bilinear_x2(x), X_re = sigmoid(W_S ReLU(W_e X_e + W_d u)) * X_e
(1x1 convs, W_e bias-free, alpha in float32), two 3x3 CBR on [X_re, u]. Deep
supervision: 1x1 conv (float32) on the bottleneck and decoder stages 1-4, then a
bilinear resize to the input size (half-pixel centres, as jax.image.resize).
Outputs {'logits': (B, K, H, W), 'deep_supervision': 5 x (B, K, H, W), coarse to fine}.
"""

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_twins import layers


class CrossAttentionGate(nn.Module):
  """Children '0_w_enc', '1_w_dec', '2_w_s' (cross_attention.CrossAttentionGate)."""

  def __init__(self, enc_channels: int, dec_channels: int, inter_features: int | None = None):
    super().__init__()
    inter = inter_features or max(1, enc_channels // 2)
    self.add_module('0_w_enc', nn.Conv2d(enc_channels, inter, 1, bias=False))
    self.add_module('1_w_dec', nn.Conv2d(dec_channels, inter, 1))
    self.add_module('2_w_s', nn.Conv2d(inter, 1, 1))

  def forward(self, x_enc: torch.Tensor, g_dec: torch.Tensor) -> torch.Tensor:
    m = self._modules
    s = F.relu(m['0_w_enc'](x_enc) + m['1_w_dec'](g_dec))
    alpha = torch.sigmoid(m['2_w_s'](s).float())
    return (alpha * x_enc.float()).to(x_enc.dtype)


class CrossAttentionDecoderStage(nn.Module):
  """Children '0_gate' (optional) and '1_block'."""

  def __init__(self, in_channels: int, skip_channels: int, features: int,
               attention: bool = True, gate_features: int | None = None):
    super().__init__()
    self.attention = attention
    if attention:
      self.add_module('0_gate', CrossAttentionGate(skip_channels, in_channels, gate_features))
    self.add_module('1_block', layers.DoubleConv(skip_channels + in_channels, features))

  def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    up = layers.upsample_2x(x, 'bilinear')
    if self.attention:
      skip = self._modules['0_gate'](skip, up)
    return self._modules['1_block'](torch.cat([skip, up.to(skip.dtype)], dim=1))


class DeepSupervisionHead(nn.Module):
  """'conv' (a float32 Head), then a bilinear resize to `size`."""

  def __init__(self, in_channels: int, num_classes: int):
    super().__init__()
    self.conv = layers.Head(in_channels, num_classes)

  def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(self.conv(x), size=tuple(size), mode='bilinear', align_corners=False)


class CrossAttentionUNet(nn.Module):
  """Children '0_down_l', '1_up_i', '2_ds_i', '3_head' as in Flax."""

  def __init__(self, in_channels: int, features: Sequence[int] = (32, 64, 128, 256, 512, 1024),
               num_classes: int = 1, attention: bool = True, deep_supervision: bool = True,
               gate_features: int | None = None):
    super().__init__()
    self.levels, self.deep_supervision = len(features), deep_supervision
    width = in_channels
    for level, f in enumerate(features, start=1):
      self.add_module(f'0_down_{level}', layers.EncoderStage(width, f, pool=level > 1))
      width = f
    decoded_widths = [width]
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      f = features[level - 1]
      self.add_module(f'1_up_{i}', CrossAttentionDecoderStage(width, f, f, attention,
                                                              gate_features))
      width = f
      decoded_widths.append(f)
    if deep_supervision:
      for i, c in enumerate(decoded_widths[:-1], start=1):
        self.add_module(f'2_ds_{i}', DeepSupervisionHead(c, num_classes))
    self.add_module('3_head', layers.Head(width, num_classes))

  def forward(self, x: torch.Tensor) -> dict:
    size = x.shape[2:]
    skips = []
    for level in range(1, self.levels + 1):
      x = self._modules[f'0_down_{level}'](x)
      skips.append(x)
    decoded = [x]
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      x = self._modules[f'1_up_{i}'](x, skips[level - 1])
      decoded.append(x)
    out = {'logits': self._modules['3_head'](x)}
    if self.deep_supervision:
      out['deep_supervision'] = tuple(self._modules[f'2_ds_{i}'](feature, size)
                                      for i, feature in enumerate(decoded[:-1], start=1))
    return out


def build(model, in_channels: int, *, image_size=None) -> CrossAttentionUNet:
  """Twin of a Flax `CrossAttentionUNet` (fields read from `model`)."""
  del image_size  # no parameter depends on the input size.
  return CrossAttentionUNet(in_channels, tuple(model.features), model.num_classes,
                            model.attention, model.deep_supervision, model.gate_features)
