"""CLCI-Net (Yang et al., MICCAI 2019): cross-level fusion and context inference.

Re-expressed from the structure of the public Keras code (YH0517/CLCI_Net,
`CLCI_Net()`). Input (B, 224, 176, 1) T1 slices; every conv is conv(+bias)-BN-
ReLU with 'SAME' padding and He-normal kernels, as there.

  encoder   5 levels 32/64/128/256/512, two 3x3 convs each; dropout 0.5 on the
            bottleneck F_5. Between levels k and k+1 (k = 1..4) a CLF block
            (clf_aspp.CrossLevelFusion): maxpool(F_k) concatenated with strided
            3x3 branches from F_1..F_k, 1x1 fusion to 256/512/1024/2048.
  CLF-ASPP  on F_5 (clf_aspp.CLFASPP): 4 cross-level + 1x1 + 3 atrous (2, 4, 6)
            + image pooling, 9 x 256 -> 1x1 to 1024, dropout 0.5.
  decoder   4 levels, f = 256/128/64/32: u = conv2x2(upsample_nearest_2x(x)) to
            f; s = conv1x1(F_k) to f; y = ConvLSTM_3x3([u, s]) last hidden state
            (conv_lstm.ContextInference); then two 3x3 convs.
  head      1x1 conv to num_classes float32 logits (sigmoid in the loss).

Ablation switches (Table 2; "off" is the plain U-Net baseline behaviour):
  use_clf=False        level k+1 reads maxpool(F_k) directly; the ASPP (if on)
                       loses its 4 cross-level branches (original ASPP).
  use_aspp=False       no ASPP: the decoder starts from the dropped-out F_5.
  use_inference=False  decoder concatenates [F_k, u] (no 1x1 skip conv, no
                       ConvLSTM) before its two 3x3 convs.
All three off: a 5-level U-Net with BN after every conv (the paper's baseline).

Parameters at the defaults, BN counted 4 per channel (Keras): 36,840,225 (the public code's
layer list: 36,838,305; the +1,920 are flax's ConvLSTM hidden-conv biases, conv_lstm.py), of
which 25,280 BN moving statistics, so 36,814,945 in 'params'. Ablations: no CLF 18,997,633; no
ASPP 29,032,993; no inference 31,263,425; all off (the BN U-Net baseline) 7,773,217.

Per-part breakdown and what the paper leaves to the code: docs/models.md#clci-net
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import clf_aspp
from agmr_jax.models import conv_lstm
from agmr_jax.models import layers

Dtype = layers.Dtype


class ContextDecoderStage(nn.Module):
  """One CLCI decoder level. x (B, H, W, C_x), skip (B, 2H, 2W, C_s) -> (B, 2H, 2W, features).

    u = ReLU(BN(W_u *_{2x2} upsample_nearest_2x(x)))
    y = ConvLSTM([u, ReLU(BN(W_s *_{1x1} skip))])     context_inference=True
    y = [skip, u]                                      context_inference=False
    out = pair of 3x3 conv-BN-ReLU(y)
  """
  features: int
  context_inference: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, *, train: bool) -> jax.Array:
    up = layers.ConvBNReLU(self.features, (2, 2), dtype=self.dtype, name='0_up')(
        layers.upsample_nearest_2x(x), train=train)
    if up.shape[1:3] != skip.shape[1:3]:
      raise ValueError(
          f'ContextDecoderStage: upsampled {up.shape} does not match skip {skip.shape}')
    if self.context_inference:
      skip = layers.ConvBNReLU(self.features, (1, 1), dtype=self.dtype, name='1_skip')(
          skip, train=train)
      y = conv_lstm.ContextInference(self.features, dtype=self.dtype, name='2_lstm')(up, skip)
    else:
      y = jnp.concatenate([skip.astype(self.dtype), up], axis=-1)
    return layers.DoubleConv(self.features, dtype=self.dtype, name='3_block')(y, train=train)


class CLCINet(nn.Module):
  """CLCI-Net with its ablation switches.

  (B, H, W, C_in) -> {'logits': (B, H, W, num_classes) float32}; H and W must be
  multiples of 2 ** (len(features) - 1). Parameter tree (network and sorted
  order): 0_down_1, 0_down_1_clf, 0_down_2, ..., 0_down_L, 1_aspp,
  2_up_1 (coarsest) .. 2_up_{L-1}, 3_head.

  Attributes:
    features: encoder widths per level, finest first (32..512).
    num_classes: output channels (1 -> sigmoid downstream).
    fusion_expansion: CLF fusion width = this x the next level's width (4).
    aspp_features: width of each ASPP branch (256).
    aspp_out_features: ASPP projection width (1024).
    aspp_rates: atrous dilation rates (2, 4, 6).
    dropout_rate: dropout on the bottleneck and after the ASPP (0.5).
    use_clf / use_aspp / use_inference: Table 2's switches (see module doc).
    dtype: compute dtype; params float32, logits float32.
  """
  features: tuple[int, ...] = (32, 64, 128, 256, 512)
  num_classes: int = 1
  fusion_expansion: int = 4
  aspp_features: int = 256
  aspp_out_features: int = 1024
  aspp_rates: tuple[int, ...] = (2, 4, 6)
  dropout_rate: float = 0.5
  use_clf: bool = True
  use_aspp: bool = True
  use_inference: bool = True
  dtype: Dtype = jnp.float32

  def _encoder(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """F_1 .. F_L; the bottleneck F_L already dropped out."""
    levels = []
    for level, width in enumerate(self.features, start=1):
      if level > 1 and self.use_clf:
        x = clf_aspp.CrossLevelFusion(self.fusion_expansion * width, dtype=self.dtype,
                                      name=f'0_down_{level - 1}_clf')(levels, train=train)
      elif level > 1:
        x = layers.max_pool_2x2(x)
      x = layers.DoubleConv(width, dtype=self.dtype, name=f'0_down_{level}')(x, train=train)
      levels.append(x)
    levels[-1] = nn.Dropout(self.dropout_rate)(levels[-1], deterministic=not train)
    return levels

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    layers.check_divisible(x, 2 ** (len(self.features) - 1), type(self).__name__)
    levels = self._encoder(x.astype(self.dtype), train=train)
    x = levels[-1]
    if self.use_aspp:
      x = clf_aspp.CLFASPP(
          self.aspp_features, self.aspp_out_features, rates=tuple(self.aspp_rates),
          cross_level=self.use_clf, dropout_rate=self.dropout_rate, dtype=self.dtype,
          name='1_aspp')(x, levels[:-1], train=train)
    for i, level in enumerate(range(len(self.features) - 1, 0, -1), start=1):
      x = ContextDecoderStage(self.features[level - 1], context_inference=self.use_inference,
                              dtype=self.dtype, name=f'2_up_{i}')(x, levels[level - 1],
                                                                  train=train)
    return {'logits': layers.Head(self.num_classes, name='3_head')(x)}
