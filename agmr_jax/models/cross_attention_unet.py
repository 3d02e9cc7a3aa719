"""Deeply supervised cross-attention U-Net (thesis, seed 003, sec. 4 and 5.2, Fig. 4 and 7).

  encoder   6 levels, widths 32/64/128/256/512/1024: two 3x3 conv(+bias)-BN-ReLU
            per level, 2x2 max-pool between levels: H/32 at the bottleneck, 7x7
            for 224x224.
  decoder   5 stages, coarse to fine: bilinear x2 upsample u (no conv), gate
            the skip with it, X_re = CrossAttentionGate(skip, u) (cross_attention.py),
            concat [X_re, u], two 3x3 conv-BN-ReLU to the skip's width.
  heads     deep supervision on the bottleneck and on the outputs of decoder
            stages 1-4 (widths 1024..64): 1x1 conv + bilinear resize to the
            input's H x W; the last decoder output (width 32) goes through the
            final 1x1 head. Six estimations in all, coarse to fine, one per
            loss weight {0.03, ..., 0.5}.
  output    {'logits': (B, H, W, K) float32,
             'deep_supervision': tuple of 5 (B, H, W, K) float32, coarse to fine}
            K = 1 (MRI; sigmoid in the loss) or 3 (CT: background, lesion,
            lesion contour; softmax). Pre-activation, as every model here.

Deep-supervision heads run the 1x1 conv first, at the coarse level, then
resize the K logit channels: equal to resize-then-conv (pinned by a test).

Ablation switches (thesis Tables 1-2 and Figs. 8-9): `attention=False` gives
plain [skip, up] concatenation (U-Net, U-Net + CW, U-Net + CW + DS);
`deep_supervision=False` drops the five auxiliary heads. Class weights are the
objective's business (objectives/thesis.py).

Parameters (params + BN statistics, BN counted 4 per channel), widths f_l:
  level pair C_in -> f:   9 C_in f + 9 f^2 + 10 f
  decoder pair:           the same with C_in = C_skip + C_up = f + 2f
  gate at skip width C:   C^2/2 (W_e) + C^2 + C/2 (W_d) + C/2 + 1 (W_S) = 3C^2/2 + C + 1
  head of width C:        C K + K
At the defaults: encoder 18,885,312 + 288 C_in, decoder blocks 12,580,544, gates
524,773, five DS heads 1,989 K, final head 33 K. With 3 input channels (thesis
MRI: ADC, TTP, Tmax) and K = 1: 31,993,515 (31,981,483 in 'params'); K = 3:
31,997,559. Pinned by tests/test_cross_attention_unet.py.

Choices (depth, which decoder feature gates, head order) and counts:
docs/models.md#cross-attention-u-net
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers
from agmr_jax.models.cross_attention import CrossAttentionGate

Dtype = layers.Dtype


class CrossAttentionDecoderStage(nn.Module):
  """y = DoubleConv(concat(gate(skip, u), u)), u = bilinear_x2(x).

  x: (B, H, W, C_x) coarser decoder feature; skip: (B, 2H, 2W, C_s);
  returns (B, 2H, 2W, features). Not layers.DecoderStage: that stage gates with
  the coarse x before upsampling, whereas this gate reads u, the decoder
  feature at the skip's resolution (sec. 4.1 "same scale").
  """
  features: int
  attention: bool = True
  gate_features: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, *, train: bool) -> jax.Array:
    up = layers.upsample_bilinear_2x(x)
    if up.shape[1:3] != skip.shape[1:3]:
      raise ValueError(
          f'CrossAttentionDecoderStage: upsampled {up.shape} does not match skip {skip.shape}')
    if self.attention:
      skip = CrossAttentionGate(self.gate_features, dtype=self.dtype, name='0_gate')(skip, up)
    y = jnp.concatenate([skip.astype(self.dtype), up.astype(self.dtype)], axis=-1)
    return layers.DoubleConv(self.features, dtype=self.dtype, name='1_block')(y, train=train)


class DeepSupervisionHead(nn.Module):
  """1x1 conv to K float32 logits, then one bilinear resize to `size`.

  (B, h, w, C) -> (B, H, W, K). Equal to resize-then-conv (see module docstring).
  """
  num_classes: int
  size: tuple[int, int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    logits = layers.Head(self.num_classes, name='conv')(x)
    shape = (logits.shape[0], *self.size, self.num_classes)
    return jax.image.resize(logits, shape, method='bilinear')


class CrossAttentionUNet(nn.Module):
  """The thesis's U-Net with cross-attention gates and deep supervision.

  Parameter tree (network order, also sorted order): 0_down_1 .. 0_down_L,
  1_up_1 (coarsest) .. 1_up_{L-1}, 2_ds_1 (bottleneck) .. 2_ds_{L-1}, 3_head.

  Attributes:
    features: widths per level, finest first; H and W must be multiples of
      2 ** (len(features) - 1).
    num_classes: 1 (sigmoid, MRI) or 3 (softmax: background, lesion, contour).
    attention: cross-attention gate on every skip.
    deep_supervision: return the auxiliary heads' logits.
    gate_features: F_int of every gate; None -> half the skip's width.
    dtype: compute dtype; params and all logits float32.
  """
  features: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
  num_classes: int = 1
  attention: bool = True
  deep_supervision: bool = True
  gate_features: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict:
    levels = len(self.features)
    layers.check_divisible(x, 2 ** (levels - 1), type(self).__name__)
    size = tuple(x.shape[1:3])
    x = x.astype(self.dtype)
    skips = []
    for level, width in enumerate(self.features, start=1):
      x = layers.EncoderStage(width, pool=None if level == 1 else layers.max_pool_2x2,
                              dtype=self.dtype, name=f'0_down_{level}')(x, train=train)
      skips.append(x)
    # Decoder outputs coarse to fine, the bottleneck first; the last one feeds the final head.
    decoded = [x]
    for i, level in enumerate(range(levels - 1, 0, -1), start=1):
      x = CrossAttentionDecoderStage(
          self.features[level - 1], attention=self.attention, gate_features=self.gate_features,
          dtype=self.dtype, name=f'1_up_{i}')(x, skips[level - 1], train=train)
      decoded.append(x)
    outputs = {'logits': layers.Head(self.num_classes, name='3_head')(x)}
    if self.deep_supervision:
      outputs['deep_supervision'] = tuple(
          DeepSupervisionHead(self.num_classes, size, name=f'2_ds_{i}')(feature)
          for i, feature in enumerate(decoded[:-1], start=1))
    return outputs
