"""PyTorch twin of agmr_jax.models.unet.UNet (Keras-style U-Net baseline).

Same specification, NCHW: 5 encoder levels of two 3x3 conv-BN-ReLU (widths
32..512), 2x2 max-pool between levels, dropout 0.3 after levels 4 and 5; 4
decoder levels of x2 nearest upsample + 2x2 conv + ReLU, concat [skip, up], two
3x3 conv-BN-ReLU; 1x1 float32 head. (B, C_in, H, W) -> {'logits': (B, K, H, W)}.
Children carry the Flax names ('0_down_l', '1_up_i', '2_head') for the transfer.
"""

from collections.abc import Callable
from collections.abc import Sequence

import torch
from torch import nn

from agmr_jax.models import layers as flax_layers
from benchmarks.torch_twins import layers

UPSAMPLE_TWINS = {flax_layers.UpsampleConv: layers.UpsampleConv}


class UNet(nn.Module):
  """U-Net; `skip_gate` (a torch factory, layers module docstring) gates each skip."""

  def __init__(self, in_channels: int, features: Sequence[int] = (32, 64, 128, 256, 512),
               num_classes: int = 1, dropout_rate: float = 0.3,
               dropout_levels: Sequence[int] = (4, 5),
               skip_gate: Callable[..., nn.Module] | None = None,
               upsample: Callable[..., nn.Module] = layers.UpsampleConv):
    super().__init__()
    self.levels = len(features)
    width = in_channels
    for level, f in enumerate(features, start=1):
      self.add_module(f'0_down_{level}', layers.EncoderStage(
          width, f, pool=level > 1,
          dropout_rate=dropout_rate if level in dropout_levels else 0.0))
      width = f
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      f = features[level - 1]
      self.add_module(f'1_up_{i}', layers.DecoderStage(
          width, f, f, upsample=upsample, skip_gate=skip_gate))
      width = f
    self.add_module('2_head', layers.Head(width, num_classes))

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    skips = []
    for level in range(1, self.levels + 1):
      x = self._modules[f'0_down_{level}'](x)
      skips.append(x)
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      x = self._modules[f'1_up_{i}'](x, skips[level - 1])
    return {'logits': self._modules['2_head'](x)}


def unet_kwargs(model, in_channels: int) -> dict:
  """The torch constructor arguments shared by UNet and its subclasses' twins."""
  return dict(in_channels=in_channels, features=tuple(model.features),
              num_classes=model.num_classes, dropout_rate=model.dropout_rate,
              dropout_levels=tuple(model.dropout_levels),
              upsample=layers.twin_factory(model.upsample, UPSAMPLE_TWINS, 'upsample'))


def build(model, in_channels: int, *, image_size=None) -> UNet:
  """Twin of a Flax `UNet` (fields read from `model`); gated U-Nets: attention_unet.py."""
  del image_size  # no parameter depends on the input size.
  if model.skip_gate is not None:
    raise NotImplementedError(
        f'unet twin: skip_gate={model.skip_gate!r}; use the attention_unet twin')
  return UNet(**unet_kwargs(model, in_channels))
