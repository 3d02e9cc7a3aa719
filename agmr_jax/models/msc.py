"""Multi-scale convolution (MSC) block, MDANet's encoder block (Zhang et al. 2024, Fig. 3a).

Parallel chains of 1, 2 and 3 stacked 3x3 conv-BN-ReLU layers see receptive fields of 3, 5
and 7 pixels; their outputs are concatenated:

    MSC(x) = concat(chain_1(x), chain_2(x), chain_3(x))        (B, H, W, C_in) -> (B, H, W, C)
    chain_k = (conv3x3-BN-ReLU)^k, every layer at width c_k,  c_1 + c_2 + c_3 = C

Chain widths c = (C/2, C/4, C/4) by default (`fractions`), no fusion conv after the
concatenation. Parameters (convs with bias, BN counted 4 per channel):
9 (C_in C + c_2^2 + 2 c_3^2) + 5 (c_1 + 2 c_2 + 3 c_3), about 9 C_in C + 27 C^2 / 16
(the U-Net double conv: 9 C_in C + 9 C^2).

Choices (the paper gives neither widths nor a fusion conv): docs/models.md#msc
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers


def split_widths(features: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
  """Chain widths for `features` output channels; the last chain takes the rounding rest.

  Raises:
    ValueError: if a chain would get no channel.
  """
  widths = [max(1, int(round(features * f))) for f in fractions[:-1]]
  widths.append(features - sum(widths))
  if min(widths) < 1:
    raise ValueError(f'MSC: {features} channels cannot be split as {fractions}')
  return tuple(widths)


class MSC(nn.Module):
  """Concatenation of conv chains of depth 1..len(fractions).

  Attributes:
    features: output channels C.
    fractions: share of C given to the chain of depth k (k = 1, 2, ...).
    dtype: compute dtype (BN in float32, see layers.ConvBNReLU).
  """
  features: int
  fractions: tuple[float, ...] = (0.5, 0.25, 0.25)
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    outs = []
    for depth, width in enumerate(split_widths(self.features, self.fractions), start=1):
      y = x
      for layer in range(1, depth + 1):
        y = layers.ConvBNReLU(width, dtype=self.dtype, name=f'chain{depth}_conv{layer}')(
            y, train=train)
      outs.append(y)
    return jnp.concatenate(outs, axis=-1)
