"""Shared building blocks for every network in agmr_jax.models.

Everything is NHWC (or NDHWC for 3D blocks) linen. Conventions kept here once:

* Convolutions as the Keras baselines: bias on (even before BN), He-normal kernels.
* BatchNorm(momentum=0.99, epsilon=1e-3) in collection 'batch_stats', computed in
  float32 whatever the compute dtype; the block casts its output back to `dtype`.
* Params are always float32 (`param_dtype` left at its default); `dtype` is the
  compute dtype only.
* Pooling and nearest upsampling are reshapes, never `nn.max_pool` or gathers, so
  their gradients are reductions/reshapes (deterministic on GPU; no
  select-and-scatter or scatter-add).

Why these conventions: docs/models.md#shared-blocks
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
ModuleDef = Any

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3

he_normal = nn.initializers.he_normal()

# BatchNorm as every network uses it; normalisation and statistics in float32.
BatchNorm = functools.partial(
    nn.BatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=jnp.float32)


def _spatial_axes(x: jax.Array) -> tuple[int, ...]:
  return tuple(range(1, x.ndim - 1))


def _max_pool_2(x: jax.Array, what: str) -> jax.Array:
  """Max over non-overlapping windows of 2 along every spatial axis."""
  spatial = x.shape[1:-1]
  if any(s % 2 for s in spatial):
    raise ValueError(
        f'{what} needs even spatial sizes, got {spatial} (input shape {x.shape}); '
        'crop or pad the input so every pooled level stays even.')
  split = [x.shape[0]]
  for s in spatial:
    split += [s // 2, 2]
  split.append(x.shape[-1])
  window_axes = tuple(2 + 2 * i for i in range(len(spatial)))
  return jnp.max(x.reshape(split), axis=window_axes)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, as reshape + max: (B, H, W, C) -> (B, H/2, W/2, C).

  Same values as `nn.max_pool(x, (2, 2), (2, 2))`, but its gradient is a
  reduction (deterministic on GPU) rather than select-and-scatter. At ties the
  gradient is split equally among the tied inputs (select-and-scatter picks one).

  Raises:
    ValueError: if H or W is odd.
  """
  if x.ndim != 4:
    raise ValueError(f'max_pool_2x2 expects (B, H, W, C), got shape {x.shape}')
  return _max_pool_2(x, 'max_pool_2x2')


def max_pool_2x2x2(x: jax.Array) -> jax.Array:
  """3D 2x2x2 max-pool as reshape + max: (B, D, H, W, C) -> (B, D/2, H/2, W/2, C).

  Raises:
    ValueError: if D, H or W is odd.
  """
  if x.ndim != 5:
    raise ValueError(f'max_pool_2x2x2 expects (B, D, H, W, C), got shape {x.shape}')
  return _max_pool_2(x, 'max_pool_2x2x2')


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 along every spatial axis (Keras UpSampling2D default).

  out[b, i, j, c] = x[b, i // 2, j // 2, c]. Built as broadcast + reshape so the
  gradient is a reshape + sum, not the scatter-add of a gather-based resize.
  """
  b, c = x.shape[0], x.shape[-1]
  spatial = x.shape[1:-1]
  expanded = [b]
  for s in spatial:
    expanded += [s, 1]
  expanded.append(c)
  target = [b]
  for s in spatial:
    target += [s, 2]
  target.append(c)
  y = jnp.broadcast_to(x.reshape(expanded), target)
  return y.reshape((b, *(2 * s for s in spatial), c))


def upsample_bilinear_2x(x: jax.Array) -> jax.Array:
  """Bilinear x2 of (B, H, W, C) with half-pixel centres (jax.image.resize).

  Matches tf.image.resize(bilinear) / Keras UpSampling2D(interpolation='bilinear')
  and PyTorch `interpolate(mode='bilinear', align_corners=False)`. The resize is
  a pair of small matrix contractions, so its gradient is deterministic too.
  """
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), method='bilinear').astype(x.dtype)


def check_divisible(x: jax.Array, factor: int, who: str) -> None:
  """Raises a ValueError naming `who` unless H and W are multiples of `factor`."""
  if x.ndim != 4:
    raise ValueError(f'{who}: expected NHWC input (B, H, W, C), got shape {x.shape}')
  h, w = x.shape[1:3]
  if h % factor or w % factor:
    raise ValueError(
        f'{who}: input H and W must be multiples of {factor} (one halving per '
        f'pooling), got {h}x{w}; crop or pad the slices.')


class Conv3D(nn.Module):
  """Stride-1 'SAME' 3D convolution computed as one 2D convolution: nn.Conv's function.

  (B, D, H, W, C) -> (B, D, H, W, F). Parameters are nn.Conv's, same names, shapes and
  initialiser ('kernel' (kd, kh, kw, C, F), 'bias' (F,)), so checkpoints, parameter counts and
  weight transfer do not change. The depth taps become channels: with x zero-padded along depth,
    y[:, d] = sum_k conv2d(x[:, d + k], K[k]) = conv2d(concat_k x[:, d + k], K') + b,
  K' = K transposed to (kh, kw, kd * C, F). Much faster than a 3D conv on XLA:CPU
  (docs/models.md#shared-blocks).
  """
  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 5:
      raise ValueError(f'Conv3D expects (B, D, H, W, C), got shape {x.shape}')
    kd, kh, kw = self.kernel_size
    b, depth, h, w, c = x.shape
    kernel = self.param('kernel', he_normal, (kd, kh, kw, c, self.features), jnp.float32)
    bias = (self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    lo = (kd - 1) // 2
    padded = jnp.pad(x, ((0, 0), (lo, kd - 1 - lo), (0, 0), (0, 0), (0, 0)))
    stacked = jnp.concatenate([padded[:, k:k + depth] for k in range(kd)], axis=-1)
    kernel_2d = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * c, self.features)
    y = jax.lax.conv_general_dilated(
        stacked.reshape(b * depth, h, w, kd * c), kernel_2d, window_strides=(1, 1),
        padding='SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y.reshape(b, depth, h, w, self.features)
    return y + bias if bias is not None else y


class ConvBNReLU(nn.Module):
  """Conv -> BatchNorm -> activation, 2D or 3D by the length of `kernel_size`.

  y = act(BN(W * x + b)). (B, *S, C_in) -> (B, *S / strides, features); 'SAME'
  padding (for even kernels the extra row/column goes after, as in TF/Keras).
  The conv carries a bias although BN follows it, as the Keras baselines
  (their published counts include it; docs/models.md#shared-blocks).

  Attributes:
    features: output channels.
    kernel_size: (3, 3) for 2D, (3, 3, 3) for 3D (see `Conv3DBNReLU`).
    strides: conv strides.
    use_bias: conv bias (Keras default True).
    activation: applied after BN; None for conv-BN only.
    dtype: compute dtype of the conv; BN runs in float32, output is `dtype`.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: int | Sequence[int] = 1
  use_bias: bool = True
  activation: Callable[[jax.Array], jax.Array] | None = nn.relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if len(self.kernel_size) == 3 and self.strides in (1, (1, 1, 1)):
      x = Conv3D(self.features, tuple(self.kernel_size), use_bias=self.use_bias,
                 dtype=self.dtype, name='conv')(x)
    else:
      x = nn.Conv(self.features, tuple(self.kernel_size), strides=self.strides,
                  padding='SAME', use_bias=self.use_bias, kernel_init=he_normal,
                  dtype=self.dtype, name='conv')(x)
    x = BatchNorm(use_running_average=not train, name='bn')(x)
    if self.activation is not None:
      x = self.activation(x)
    return x.astype(self.dtype)


# The 3D preset used by D-UNet's slice-depth branch: 3x3x3 conv, BN, ReLU.
Conv3DBNReLU = functools.partial(ConvBNReLU, kernel_size=(3, 3, 3))


class DoubleConv(nn.Module):
  """Two `conv` blocks at the same width: the U-Net level block.

  (B, *S, C_in) -> (B, *S, features). With the default ConvBNReLU it is
  Keras D-UNet's BN_block; with `Conv3DBNReLU` its BN_block3d.
  """
  features: int
  conv: ModuleDef = ConvBNReLU
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.conv(self.features, dtype=self.dtype, name='conv_1')(x, train=train)
    return self.conv(self.features, dtype=self.dtype, name='conv_2')(x, train=train)


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation (Hu et al.), as in Keras D-UNet's squeeze_excite_block.

  s = sigmoid(W2 relu(W1 GAP(x))), y = x * s, with W1: C -> max(1, C // ratio),
  W2: C//ratio -> C, both without bias (2 * C * (C // ratio) parameters).
  Works for (B, H, W, C) and (B, D, H, W, C). The max(1, .) only matters for
  widths below `ratio` (tiny test models).
  """
  ratio: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    s = jnp.mean(x.astype(jnp.float32), axis=_spatial_axes(x)).astype(self.dtype)
    s = nn.Dense(max(1, c // self.ratio), use_bias=False, kernel_init=he_normal,
                 dtype=self.dtype, name='0_reduce')(s)
    s = nn.relu(s)
    s = nn.Dense(c, use_bias=False, kernel_init=he_normal, dtype=self.dtype,
                 name='1_expand')(s)
    s = nn.sigmoid(s)
    return x * s.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (c,))


class UpsampleConv(nn.Module):
  """Keras-U-Net up path: x2 upsample, then a `kernel_size` conv + ReLU (no BN).

  (B, H, W, C_in) -> (B, 2H, 2W, features). This is the default `upsample`
  factory of `DecoderStage`; any replacement (e.g. AGMR's MDU) is called as
  `upsample(features=..., dtype=..., name=...)(x, train=...)` and must double
  H and W (its output width is free).
  """
  features: int
  kernel_size: Sequence[int] = (2, 2)
  method: str = 'nearest'  # or 'bilinear'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # no BN or dropout here; kept for the factory contract.
    if self.method == 'nearest':
      x = upsample_nearest_2x(x)
    elif self.method == 'bilinear':
      x = upsample_bilinear_2x(x)
    else:
      raise ValueError(f"UpsampleConv.method must be 'nearest' or 'bilinear', got {self.method!r}")
    x = nn.Conv(self.features, tuple(self.kernel_size), padding='SAME',
                kernel_init=he_normal, dtype=self.dtype, name='conv')(x)
    return nn.relu(x)


class EncoderStage(nn.Module):
  """One encoder level: [pool] -> DoubleConv -> [dropout].

  (B, *S, C_in) -> (B, *S / 2, features) (or *S when `pool` is None, the first
  level). Dropout uses rng 'dropout' and is off when train=False. 2D by default;
  `pool=max_pool_2x2x2, conv=Conv3DBNReLU` makes it a 3D level.
  """
  features: int
  pool: Callable[[jax.Array], jax.Array] | None = max_pool_2x2
  dropout_rate: float = 0.0
  conv: ModuleDef = ConvBNReLU
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.pool is not None:
      x = self.pool(x)
    x = DoubleConv(self.features, conv=self.conv, dtype=self.dtype, name='block')(x, train=train)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return x


class DecoderStage(nn.Module):
  """One decoder level: y = DoubleConv(concat(gate(skip, x), upsample(x))).

  x: (B, H, W, C_x) coarser feature; skip: (B, 2H, 2W, C_s) -> (B, 2H, 2W, features).
  The gate is optional (identity when None). Concat order is [skip, up] as in
  Keras D-UNet. Factories:
    upsample(features=, dtype=, name=)(x, *, train) -> (B, 2H, 2W, any C);
    skip_gate(dtype=, name=)(skip, gating, *, train) -> skip-shaped, where the
      gating signal is the coarser decoder feature x (before upsampling).
  """
  features: int
  upsample: ModuleDef = UpsampleConv
  skip_gate: ModuleDef | None = None
  conv: ModuleDef = ConvBNReLU
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, *, train: bool) -> jax.Array:
    up = self.upsample(features=self.features, dtype=self.dtype, name='0_up')(x, train=train)
    if up.shape[1:3] != skip.shape[1:3]:
      raise ValueError(f'DecoderStage: upsampled {up.shape} does not match skip {skip.shape}')
    if self.skip_gate is not None:
      skip = self.skip_gate(dtype=self.dtype, name='1_gate')(skip, x, train=train)
    y = jnp.concatenate([skip.astype(self.dtype), up.astype(self.dtype)], axis=-1)
    return DoubleConv(self.features, conv=self.conv, dtype=self.dtype, name='2_block')(
        y, train=train)


class Head(nn.Module):
  """1x1 conv to `num_classes` logits, computed and returned in float32.

  Float32 whatever the network's compute dtype: the losses (sigmoid / softmax,
  log-Dice) want full-precision logits, and this conv is tiny. Glorot-uniform
  kernel (Keras's default for the output conv).
  """
  num_classes: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.glorot_uniform(),
                   dtype=jnp.float32, name='conv')(x.astype(jnp.float32))
