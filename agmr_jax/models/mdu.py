"""Multi-scale deconvolution upsampling (MDU, AGMR-Net Sec. 3.3).

For x (B, H, W, C_in) and kernel sizes k_1..k_n (the paper: 3, 5, 7, 9 with padding 1, 2, 3, 4):

  y_i = Dropout(ReLU(BN(ConvT_{k_i x k_i, stride 2}(x))))     (B, 2H, 2W, C_out / n) each
  y   = [y_1; ...; y_n]                                         (B, 2H, 2W, C_out)

C_out defaults to C_in (the paper's C', as Table 9's counts imply). Every odd k >= 3 gives exactly
2H x 2W for any H, W (lax.conv_transpose 'SAME' stride 2; PyTorch's padding (k-1)/2 with
output_padding 1 is the same operator up to which side the extra row falls on); even k and k = 1
are rejected.

`ConvTranspose2x` computes lax.conv_transpose's 'SAME' stride-2 result (same kernel shape,
initialiser and parameter names as nn.ConvTranspose) in sub-pixel form: four stride-1
convolutions of the un-dilated input, one per output phase (a, b) in {0, 1}^2 with the kernel's
sub-grid K[t_a::2, t_b::2], interleaved by a reshape. No multiplications by inserted zeros; the
gradient is convolutions and a reshape (deterministic on GPU).

`upsample=False` makes the same multi-scale block with stride-1 convolutions (B, H, W, C_out):
what Table 10 places in the encoder or on the skip connections instead of the decoder.

Parameters: sum_i (k_i^2 C_in C_out/n + C_out/n) + 2 C_out (BN scale/offset) trainable,
plus 2 C_out BN moving statistics.

Choices (C' = C_in, output size, sub-pixel timings, dropout rate): docs/models.md#mdu
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers

Dtype = layers.Dtype


def check_kernels(kernels: Sequence[int], features: int, who: str = 'MDU') -> None:
  """Raises ValueError unless every kernel is odd and >= 3 and `features` splits evenly."""
  kernels = tuple(kernels)
  if not kernels:
    raise ValueError(f'{who}: needs at least one kernel size')
  bad = [k for k in kernels if k < 3 or k % 2 == 0]
  if bad:
    raise ValueError(
        f'{who}: kernel sizes must be odd and at least 3 (padding (k - 1) / 2 keeps the output '
        f'exactly 2x), got {bad} in {kernels}')
  if features % len(kernels):
    raise ValueError(f'{who}: {features} output channels do not split evenly over '
                     f'{len(kernels)} branches {kernels}')


def _phase(k: int, a: int) -> tuple[int, tuple[int, int]]:
  """Output phase a of a 'SAME' stride-2 transposed conv with odd k >= 3.

  lax pads the zero-inserted input with m + 1 zeros before and m after (k = 2m + 1), so output
  row 2q + a sums K[t] x[q + (a + t - m - 1) / 2] over the taps t with a + t - m - 1 even: taps
  t_a, t_a + 2, ... with t_a = (m + 1 - a) % 2, a stride-1 correlation with the padding returned.
  """
  m = (k - 1) // 2
  first = (m + 1 - a) % 2
  taps = len(range(first, k, 2))
  shift = (a + first - m - 1) // 2
  return first, (-shift, taps - 1 + shift)


class ConvTranspose2x(nn.Module):
  """nn.ConvTranspose(features, (k, k), strides=2, padding='SAME') in sub-pixel form.

  (B, H, W, C_in) -> (B, 2H, 2W, features); params 'kernel' (k, k, C_in, features), 'bias'.
  """
  features: int
  kernel_size: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    check_kernels((k,), self.features, type(self).__name__)
    kernel = self.param('kernel', layers.he_normal, (k, k, x.shape[-1], self.features),
                        jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    rows = []
    for a in (0, 1):
      first_a, pad_a = _phase(k, a)
      row = []
      for b in (0, 1):
        first_b, pad_b = _phase(k, b)
        row.append(jax.lax.conv_general_dilated(
            x, kernel[first_a::2, first_b::2], (1, 1), (pad_a, pad_b),
            dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
      rows.append(jnp.stack(row, axis=3))  # (B, H, W, 2, C): phase b along axis 3
    # y[:, 2q + a, 2r + b] = phase (a, b) at (q, r): (B, H, 2, W, 2, C) merged by a reshape.
    y = jnp.stack(rows, axis=2)
    y = y.reshape(x.shape[0], 2 * x.shape[1], 2 * x.shape[2], self.features)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y


class MDU(nn.Module):
  """Multi-scale (de)convolution: (B, H, W, C_in) -> (B, 2H, 2W, C_out) (or (B, H, W, C_out)).

  Attributes:
    kernels: branch kernel sizes, odd (paper: (3, 5, 7, 9); Table 9: four equal sizes).
    features: C_out; None -> C_in.
    dropout_rate: after each branch's BN-ReLU (rng 'dropout'; the paper gives no rate).
    upsample: True: stride-2 transposed convs (the MDU); False: stride-1 convs, same size.
    dtype: compute dtype; BN in float32.
  """
  kernels: tuple[int, ...] = (3, 5, 7, 9)
  features: int | None = None
  dropout_rate: float = 0.1
  upsample: bool = True
  dtype: Dtype = jnp.float32

  def _branch(self, x: jax.Array, k: int, width: int, i: int) -> jax.Array:
    if self.upsample:
      return ConvTranspose2x(width, k, dtype=self.dtype, name=f'{i}_deconv{k}')(x)
    return nn.Conv(width, (k, k), padding='SAME', kernel_init=layers.he_normal,
                   dtype=self.dtype, name=f'{i}_conv{k}')(x)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f'MDU expects (B, H, W, C), got shape {x.shape}')
    features = self.features or x.shape[-1]
    check_kernels(self.kernels, features)
    width = features // len(self.kernels)
    x = x.astype(self.dtype)
    outs = []
    for i, k in enumerate(self.kernels):
      y = self._branch(x, k, width, i)
      y = nn.relu(layers.BatchNorm(use_running_average=not train, name=f'{i}_norm{k}')(y))
      if self.dropout_rate > 0:
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
      outs.append(y.astype(self.dtype))
    y = jnp.concatenate(outs, axis=-1)
    factor = 2 if self.upsample else 1
    expected = (x.shape[0], factor * x.shape[1], factor * x.shape[2], features)
    if y.shape != expected:  # Guards the exact-2x property against padding-semantics changes.
      raise ValueError(f'MDU: output {y.shape} is not {expected} for kernels {self.kernels}')
    return y
