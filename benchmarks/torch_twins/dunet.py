"""PyTorch twin of agmr_jax.models.dunet.DUNet (Zhou et al., 2019), NCHW.

Input (B, D, H, W): D neighbouring slices as channels (paper: 4 at 192x192).
The 3D stem sees them as a one-channel volume, (B, 1, D, H, W) = x.unsqueeze(1)
(Flax: (B, D, H, W, 1)); its level-l feature is (B, C3, D / 2^(l-1), H_l, W_l).
A fusion projects it to 2D, p = ReLU(W2 *_{3x3} T(W1 *_{1x1x1} x3d)), where T
makes depth the channel axis, and combines p with the 2D feature, e.g. D-UNet's
y = SE(p) + SE(x2d). Decoder and head as the U-Net twin.

Torch factory contracts, the twins of DUNet's Flax factory fields:
  fusion(features, channels_3d, depth) -> module(x3d, x2d) -> (B, features, H, W)
  upsample(in_channels, features) -> module(x), exposing out_channels
  stage_attention(channels) -> module(x) -> (y, aux)
AGMR-Net's twin reuses this class with its own CFF / MDU / CPA factories.
"""

from collections.abc import Callable
from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from agmr_jax.models import dunet as flax_dunet
from agmr_jax.models import layers as flax_layers
from benchmarks.torch_twins import layers


class Encoder3D(nn.Module):
  """3D levels 'down_1'..: (B, 1, D, H, W) -> tuple of level features."""

  def __init__(self, features: Sequence[int] = (32, 64, 128), in_channels: int = 1):
    super().__init__()
    self.levels = len(features)
    width = in_channels
    for level, f in enumerate(features, start=1):
      self.add_module(f'down_{level}', layers.EncoderStage(width, f, pool=level > 1, dims=3))
      width = f

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outs = []
    for level in range(1, self.levels + 1):
      x = self._modules[f'down_{level}'](x)
      outs.append(x)
    return tuple(outs)


class Project3DTo2D(nn.Module):
  """p = ReLU(W2 *_{3x3} T(W1 *_{1x1x1} x3d)): (B, C3, D, H, W) -> (B, features, H, W)."""

  def __init__(self, features: int, channels_3d: int, depth: int):
    super().__init__()
    self.add_module('0_squeeze3d', nn.Conv3d(channels_3d, 1, 1))
    self.add_module('1_conv2d', layers.conv(depth, features, 3))

  def forward(self, x3d: torch.Tensor) -> torch.Tensor:
    y = self._modules['0_squeeze3d'](x3d)[:, 0]  # depth becomes the channel axis.
    return F.relu(self._modules['1_conv2d'](y))


class SEAddFusion(nn.Module):
  """y = SE(Project3DTo2D(x3d)) + SE(x2d) (Keras D_SE_Add)."""

  def __init__(self, features: int, channels_3d: int, depth: int, ratio: int = 16):
    super().__init__()
    self.add_module('0_project', Project3DTo2D(features, channels_3d, depth))
    self.add_module('1_se_3d', layers.SqueezeExcite(features, ratio))
    self.add_module('2_se_2d', layers.SqueezeExcite(features, ratio))

  def forward(self, x3d: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
    m = self._modules
    return m['1_se_3d'](m['0_project'](x3d)) + m['2_se_2d'](x2d)


class AddFusion(nn.Module):
  """y = Project3DTo2D(x3d) + x2d (Keras D_Add)."""

  def __init__(self, features: int, channels_3d: int, depth: int):
    super().__init__()
    self.add_module('0_project', Project3DTo2D(features, channels_3d, depth))

  def forward(self, x3d: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
    return self._modules['0_project'](x3d) + x2d


class ConcatFusion(nn.Module):
  """y = ReLU(W *_{1x1} concat(Project3DTo2D(x3d), x2d) + b) (Keras D_concat)."""

  def __init__(self, features: int, channels_3d: int, depth: int):
    super().__init__()
    self.add_module('0_project', Project3DTo2D(features, channels_3d, depth))
    self.add_module('1_conv', nn.Conv2d(2 * features, features, 1))

  def forward(self, x3d: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
    p = self._modules['0_project'](x3d)
    return F.relu(self._modules['1_conv'](torch.cat([p, x2d.to(p.dtype)], dim=1)))


class DUNet(nn.Module):
  """D-UNet twin; children '0_stem3d', '1_down_l[_attn|_fuse]', '2_up_i', '3_head'."""

  def __init__(self, in_channels: int, features: Sequence[int] = (32, 64, 128, 256, 512),
               features_3d: Sequence[int] = (32, 64, 128), fusion_levels: Sequence[int] = (2, 3),
               num_classes: int = 1, dropout_rate: float = 0.3,
               dropout_levels: Sequence[int] = (4, 5),
               fusion: Callable[..., nn.Module] = SEAddFusion,
               upsample: Callable[..., nn.Module] = layers.UpsampleConv,
               stage_attention: Callable[..., nn.Module] | None = None):
    super().__init__()
    self.levels, self.fusion_levels = len(features), tuple(fusion_levels)
    self.has_attention = stage_attention is not None
    if self.fusion_levels:
      self.add_module('0_stem3d', Encoder3D(features_3d))
    width = in_channels
    for level, f in enumerate(features, start=1):
      self.add_module(f'1_down_{level}', layers.EncoderStage(
          width, f, pool=level > 1,
          dropout_rate=dropout_rate if level in dropout_levels else 0.0))
      if stage_attention is not None:
        self.add_module(f'1_down_{level}_attn', stage_attention(f))
      if level in self.fusion_levels:
        depth = in_channels // 2 ** (level - 1)
        self.add_module(f'1_down_{level}_fuse', fusion(f, features_3d[level - 1], depth))
      width = f
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      f = features[level - 1]
      self.add_module(f'2_up_{i}', layers.DecoderStage(width, f, f, upsample=upsample))
      width = f
    self.add_module('3_head', layers.Head(width, num_classes))

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    m = self._modules
    feats_3d = m['0_stem3d'](x.unsqueeze(1)) if self.fusion_levels else ()
    skips, aux = [], []
    for level in range(1, self.levels + 1):
      x = m[f'1_down_{level}'](x)
      if self.has_attention:
        x, a = m[f'1_down_{level}_attn'](x)
        aux.append(a)
      if level in self.fusion_levels:
        x = m[f'1_down_{level}_fuse'](feats_3d[level - 1], x)
      skips.append(x)
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      x = m[f'2_up_{i}'](x, skips[level - 1])
    out = {'logits': m['3_head'](x)}
    if self.has_attention:
      out['encoder_aux'] = tuple(aux)
    return out


FUSION_TWINS = {flax_dunet.SEAddFusion: SEAddFusion, flax_dunet.AddFusion: AddFusion,
                flax_dunet.ConcatFusion: ConcatFusion}
UPSAMPLE_TWINS = {flax_layers.UpsampleConv: layers.UpsampleConv}


def dunet_kwargs(model, in_channels: int, *, fusion_twins=None, upsample_twins=None,
                 attention_twins=None) -> dict:
  """Torch DUNet arguments from a Flax DUNet; extra factory tables for AGMR-style reuse."""
  return dict(
      in_channels=in_channels, features=tuple(model.features),
      features_3d=tuple(model.features_3d), fusion_levels=tuple(model.fusion_levels),
      num_classes=model.num_classes, dropout_rate=model.dropout_rate,
      dropout_levels=tuple(model.dropout_levels),
      fusion=layers.twin_factory(model.fusion, {**FUSION_TWINS, **(fusion_twins or {})},
                                 'fusion'),
      upsample=layers.twin_factory(model.upsample,
                                   {**UPSAMPLE_TWINS, **(upsample_twins or {})}, 'upsample'),
      stage_attention=layers.twin_factory(model.stage_attention, attention_twins or {},
                                          'stage_attention'))


def build(model, in_channels: int, *, image_size=None) -> DUNet:
  """Twin of a Flax `DUNet` with D-UNet's own fusions and up path."""
  del image_size  # no parameter depends on the input size.
  return DUNet(**dunet_kwargs(model, in_channels))
