"""CLCI-Net's cross-level fusion (CLF) and the CLF-extended ASPP.

Re-expressed from the structure of the public Keras code (YH0517/CLCI_Net). Every
conv is conv(+bias) -> BatchNorm -> ReLU with 'SAME' padding, as there.

CLF (Yang et al. 2019, Sec. 2.0.1, Fig. 1b) closes encoder level k: the level's
feature is max-pooled, every earlier level's feature F_j (j = 1..k, F_k the
current one) is brought to the pooled resolution by a 3x3 conv with stride
2^(k - j + 1), and everything is fused by a 1x1 conv:

  P_k   = maxpool_2x2(F_k)                                   (B, H/2^k, W/2^k, C_k)
  D_j   = ReLU(BN(W_j *_{3x3, stride 2^(k-j+1)} F_j + b_j))   (B, H/2^k, W/2^k, C_k)
  out_k = ReLU(BN(W *_{1x1} [D_k, D_{k-1}, ..., D_1, P_k] + b))     (B, ., ., features)

(the concatenation order is the Keras code's). In CLCI-Net C_k is level k's
width and `features` = 4 x level (k+1)'s width: 256, 512, 1024, 2048.

CLF-ASPP (Sec. 2.0.2, Fig. 1c) at the bottleneck F_5 (B, h, w, C_5), h = H/16:
nine 256-channel branches, concatenated and projected to 1024:

  clf_j = ReLU(BN(3x3, stride 2^(5-j) on F_j)),  j = 1..4     cross-level branches
  b_0   = ReLU(BN(1x1 on F_5))
  b_r   = ReLU(BN(3x3, dilation r on F_5)),      r = 2, 4, 6  atrous branches
  b_img = broadcast_hxw(ReLU(BN(1x1 on mean_hw(F_5))))        image pooling
  out   = Dropout_0.5(ReLU(BN(1x1 on [clf_1..clf_4, b_0, b_2, b_4, b_6, b_img])))

Without the cross-level branches (`cross_level=False`) it is the original
five-branch ASPP of DeepLab (Table 2's "ASPP" without "CLF").

Choices and counts: docs/models.md#clf-and-clf-aspp
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers

Dtype = layers.Dtype


def _stride_to(source: jax.Array, target_hw: tuple[int, int], who: str) -> int:
  """The integer stride that takes `source`'s H and W exactly to `target_hw`."""
  h, w = source.shape[1:3]
  th, tw = target_hw
  if h % th or w % tw or h // th != w // tw:
    raise ValueError(f'{who}: cannot bring a {h}x{w} feature to {th}x{tw} with one stride')
  return h // th


def cross_level_branches(features: int, earlier: Sequence[jax.Array],
                         target_hw: tuple[int, int], *, train: bool, dtype: Dtype,
                         prefix: str) -> list[jax.Array]:
  """Strided 3x3 conv-BN-ReLU from each earlier level to `target_hw` (call inside compact).

  Module names are f'{prefix}{j}' for level j = 1, 2, ... (finest first); the
  list comes back in that order.
  """
  out = []
  for j, feature in enumerate(earlier, start=1):
    stride = _stride_to(feature, target_hw, f'cross-level branch {prefix}{j}')
    out.append(layers.ConvBNReLU(features, (3, 3), strides=stride, dtype=dtype,
                                 name=f'{prefix}{j}')(feature, train=train))
  return out


class CrossLevelFusion(nn.Module):
  """CLF closing an encoder level: pool + cross-level strided branches + 1x1 fusion.

  levels: (F_1, ..., F_k), finest first, F_k the level just computed,
  F_j (B, H / 2^(j-1), W / 2^(j-1), C_j) -> (B, H_k / 2, W_k / 2, features).

  Attributes:
    features: width of the 1x1 fusion conv (the next level's input).
    branch_features: width of each strided branch; None means C_k, the current
      level's width (the Keras code's), as wide as the pooled feature.
    dtype: compute dtype.
  """
  features: int
  branch_features: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, levels: Sequence[jax.Array], *, train: bool) -> jax.Array:
    current = levels[-1]
    pooled = layers.max_pool_2x2(current)
    width = self.branch_features or current.shape[-1]
    branches = cross_level_branches(width, levels, pooled.shape[1:3], train=train,
                                    dtype=self.dtype, prefix='down_')
    y = jnp.concatenate([b.astype(self.dtype) for b in branches[::-1]]
                        + [pooled.astype(self.dtype)], axis=-1)
    return layers.ConvBNReLU(self.features, (1, 1), dtype=self.dtype, name='fuse')(
        y, train=train)


class AtrousConvBNReLU(nn.Module):
  """3x3 conv with dilation `rate` ('SAME'), BN, ReLU: an ASPP branch. Shape-preserving."""
  features: int
  rate: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), kernel_dilation=self.rate, padding='SAME',
                kernel_init=layers.he_normal, dtype=self.dtype, name='conv')(x)
    x = layers.BatchNorm(use_running_average=not train, name='bn')(x)
    return nn.relu(x).astype(self.dtype)


class ImagePooling(nn.Module):
  """ASPP's image-level branch: global mean -> 1x1 conv-BN-ReLU -> broadcast back.

  (B, h, w, C) -> (B, h, w, features): the Keras code's average pool over the
  whole map and bilinear upsampling of the 1x1 result, i.e. a broadcast. The
  mean is taken in float32.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    y = layers.ConvBNReLU(self.features, (1, 1), dtype=self.dtype, name='conv')(
        pooled, train=train)
    return jnp.broadcast_to(y, (*x.shape[:3], self.features))


class CLFASPP(nn.Module):
  """ASPP extended with cross-level branches from the earlier encoder levels.

  x: bottleneck (B, h, w, C); earlier: encoder features finest first, each an
  integer multiple of h x w (ignored when cross_level=False) ->
  (B, h, w, out_features).

  Attributes:
    features: width of every branch (256).
    out_features: width of the 1x1 projection (1024).
    rates: dilation rates of the atrous branches (2, 4, 6).
    cross_level: add the strided branches from `earlier` (CLF); False gives the
      original 5-branch ASPP.
    dropout_rate: dropout after the projection (rng 'dropout').
    dtype: compute dtype.
  """
  features: int = 256
  out_features: int = 1024
  rates: tuple[int, ...] = (2, 4, 6)
  cross_level: bool = True
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, earlier: Sequence[jax.Array] = (), *,
               train: bool) -> jax.Array:
    branches = []
    if self.cross_level:
      if not earlier:
        raise ValueError('CLFASPP(cross_level=True) needs the earlier encoder features')
      branches += cross_level_branches(self.features, earlier, x.shape[1:3], train=train,
                                       dtype=self.dtype, prefix='0_clf_')
    branches.append(layers.ConvBNReLU(self.features, (1, 1), dtype=self.dtype,
                                      name='1_conv1x1')(x, train=train))
    for rate in self.rates:
      branches.append(AtrousConvBNReLU(self.features, rate, dtype=self.dtype,
                                       name=f'2_atrous_{rate}')(x, train=train))
    branches.append(ImagePooling(self.features, dtype=self.dtype, name='3_image_pool')(
        x, train=train))
    y = jnp.concatenate([b.astype(self.dtype) for b in branches], axis=-1)
    y = layers.ConvBNReLU(self.out_features, (1, 1), dtype=self.dtype, name='4_project')(
        y, train=train)
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return y
