"""CLCI-Net's context inference: a 2-step ConvLSTM over [decoder, skip].

Replaces the U-Net skip concatenation. The upsampled decoder feature and the
(1x1-projected) encoder skip, both (B, H, W, f), form a sequence of length 2,
x_1 = decoder, x_2 = skip, run through one ConvLSTM (Shi et al., 2015) with 3x3
kernels and f filters from a zero state; the block returns the last hidden state
h_2 (B, H, W, f). With * a 'SAME' convolution and sigma the logistic sigmoid:

  i_t = sigma(W_xi * x_t + W_hi * h_{t-1} + b_i)
  f_t = sigma(W_xf * x_t + W_hf * h_{t-1} + b_f + 1)
  g_t = tanh (W_xg * x_t + W_hg * h_{t-1} + b_g)
  o_t = sigma(W_xo * x_t + W_ho * h_{t-1} + b_o)
  c_t = f_t c_{t-1} + i_t g_t,    h_t = o_t tanh(c_t),    (c_0, h_0) = 0.

The cell is flax's `nn.ConvLSTMCell`, applied twice (one set of weights for both steps),
unrolled in Python rather than scanned by `nn.RNN` (same function, same parameters; far faster
gradients on XLA:CPU). Its parameters, under 'cell': 'ih' (input conv, kernel (3, 3, f_in, 4f)
+ bias 4f) and 'hh' (hidden conv, kernel (3, 3, f, 4f) + bias 4f); gate order along the 4f axis
is i, g, f, o; the +1 on the forget gate is applied in the forward pass (no parameter).
With a zero initial state, step 1 sees c_0 = h_0 = 0, so the hidden conv and the forget gate
act only at step 2.

Differences from the public Keras code (`ConvLSTM2D(f, (3, 3), padding='same')`): a bias on the
hidden conv too (4f more values per block, 1,920 over CLCI-Net; the two biases only appear
summed), logistic rather than hard sigmoid gates (the +1 forget bias stands in for Keras's
unit_forget_bias), LeCun-normal kernels and zero biases rather than He-normal / orthogonal.

Details, timings of the scan and the reasons: docs/models.md#convlstm-context-inference
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers

Dtype = layers.Dtype


class ContextInference(nn.Module):
  """Last hidden state of a ConvLSTM run over the sequence [decoder, skip].

  decoder, skip: (B, H, W, C) each (same shape) -> h_2: (B, H, W, features),
  in `dtype`. The cell state is kept in float32 (flax initialises the carry in
  param_dtype), so under bf16 compute the recurrence accumulates in float32.

  Attributes:
    features: ConvLSTM filters f (hidden and cell channels).
    kernel_size: input and hidden conv kernels.
    dtype: compute dtype of the convs.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, decoder: jax.Array, skip: jax.Array) -> jax.Array:
    if decoder.shape != skip.shape:
      raise ValueError(
          f'ContextInference: decoder {decoder.shape} and skip {skip.shape} must have the same '
          'shape (both are projected to the same width before the ConvLSTM)')
    cell = nn.ConvLSTMCell(self.features, tuple(self.kernel_size), dtype=self.dtype,
                           name='cell')
    # The two steps unrolled in Python (one cell, so one set of weights), not scanned with
    # nn.RNN: XLA's CPU backend runs the gradient convolutions inside a scan's while loop in
    # its slow generic convolution emitter, 20-40x slower here
    # (docs/models.md#convlstm-context-inference).
    # Zero (c_0, h_0) in float32, as nn.RNN's carry (ConvLSTMCell.carry_init, param_dtype),
    # but (1, 1, 1, f): it broadcasts against the input gates to the same step-1 values, and
    # the hidden conv and its (zero) kernel gradient then cost one pixel instead of B H W.
    zeros = jnp.zeros((1,) * (decoder.ndim - 1) + (self.features,), jnp.float32)
    carry = (zeros, zeros)
    for x in (decoder, skip):
      carry, hidden = cell(carry, x.astype(self.dtype))
    return hidden.astype(self.dtype)
