"""U-Net baseline, Keras style (the `Unet()` of the public D-UNet code).

Encoder: 5 levels of two 3x3 conv-BN-ReLU, 2x2 max-pool between levels, dropout
after the two deepest levels (the dropped-out level-4 feature is also the skip).
Decoder (4 levels): nearest x2 upsample + 2x2 conv + ReLU, concat [skip, up],
two 3x3 conv-BN-ReLU (the same decoder as D-UNet's). Head: 1x1 conv to
`num_classes` float32 logits.

Shapes: (B, H, W, C_in) -> {'logits': (B, H, W, num_classes)}; H and W must be
multiples of 2 ** (len(features) - 1).

Parameters at the defaults (widths 32..512), Keras counting (BN = 4 per channel):
7,772,161 for 4 input channels, 7,771,297 for 1 (encoder 4,719,296 + 288 C_in;
decoder plus head 3,051,713).

Choices and paper numbers: docs/models.md#u-net-and-attention-u-net
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers

Dtype = layers.Dtype
ModuleDef = layers.ModuleDef


class UNet(nn.Module):
  """U-Net; `skip_gate` turns it into Attention U-Net (see attention_unet.py).

  Parameter tree (network order, also sorted order): 0_down_1 .. 0_down_L,
  1_up_1 (coarsest) .. 1_up_{L-1}, 2_head.

  Attributes:
    features: widths per level, finest first.
    num_classes: output channels (1 -> sigmoid downstream, else softmax).
    dropout_rate: dropout after the levels in `dropout_levels` (1-based).
    dropout_levels: levels followed by dropout.
    skip_gate: optional gate applied to each skip, gated by the coarser
      decoder feature (DecoderStage contract).
    upsample: decoder up-path factory (DecoderStage contract).
    dtype: compute dtype; params float32, logits float32.
  """
  features: tuple[int, ...] = (32, 64, 128, 256, 512)
  num_classes: int = 1
  dropout_rate: float = 0.3
  dropout_levels: tuple[int, ...] = (4, 5)
  skip_gate: ModuleDef | None = None
  upsample: ModuleDef = layers.UpsampleConv
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    levels = len(self.features)
    layers.check_divisible(x, 2 ** (levels - 1), type(self).__name__)
    x = x.astype(self.dtype)
    skips = []
    for level, width in enumerate(self.features, start=1):
      x = layers.EncoderStage(
          width, pool=None if level == 1 else layers.max_pool_2x2,
          dropout_rate=self.dropout_rate if level in self.dropout_levels else 0.0,
          dtype=self.dtype, name=f'0_down_{level}')(x, train=train)
      skips.append(x)
    for i, level in enumerate(range(levels - 1, 0, -1), start=1):
      x = layers.DecoderStage(
          self.features[level - 1], upsample=self.upsample, skip_gate=self.skip_gate,
          dtype=self.dtype, name=f'1_up_{i}')(x, skips[level - 1], train=train)
    return {'logits': layers.Head(self.num_classes, name='2_head')(x)}
