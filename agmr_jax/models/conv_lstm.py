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

The cell is flax's `nn.ConvLSTMCell`, applied twice (one set of weights for both
steps). The two steps are unrolled in Python rather than scanned by `nn.RNN`, which
computes the same function with the same parameters ('rnn' held none): inside the
while loop of a scan's gradient XLA:CPU keeps the convolutions in their transposed
gradient layouts and compiles them with its generic elemental convolution emitter,
not its Eigen kernels. On 2 CPU cores the scanned block's gradient took 67 s at
(2, 224, 176, 32) (paper decoder level 1; unrolled 1.8 s, forward 0.2 s) and 0.64 s at
(8, 80, 64, 8) (demo; unrolled 0.034 s); the CLCI-Net train step went from 266 s to
~5 s (paper size, batch 2) and from 2.3 s to 0.23 s (demo). Its parameters, under
'cell': 'ih' (input conv, kernel (3, 3, f_in, 4f) + bias 4f) and 'hh' (hidden conv, kernel
(3, 3, f, 4f) + bias 4f); gate order along the 4f axis is i, g, f, o; the +1 on
the forget gate is applied in the forward pass (no parameter).

Differences from the public Keras code (`ConvLSTM2D(f, (3, 3), padding='same')`):
  * Parameters: Keras has one bias (on the input conv) and none on the recurrent
    conv; flax's cell biases both, so each block has 4f more values,
    4 x (256 + 128 + 64 + 32) = 1,920 over CLCI-Net's four decoder levels:
    36,840,225 instead of 36,838,305 (+0.005 %). The two biases only ever appear
    summed, so the function class is the same.
  * Gates: Keras 2's ConvLSTM2D default recurrent_activation is hard_sigmoid
    (clip(0.2 z + 0.5, 0, 1)); flax uses the logistic sigmoid (Shi et al.'s
    equations). The +1 forget bias plays the role of Keras's unit_forget_bias.
  * Initialisation: flax's cell uses LeCun-normal kernels and zero biases (no
    init fields); Keras used He-normal input kernels and orthogonal recurrent
    kernels. The paper says only "Gaussian" initialisation.
With a zero initial state, step 1 sees c_0 = h_0 = 0, so the hidden conv and
the forget gate act only at step 2.
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
    # its slow generic convolution emitter, 20-40x slower here (module docstring).
    # Zero (c_0, h_0) in float32, as nn.RNN's carry (ConvLSTMCell.carry_init, param_dtype).
    zeros = jnp.zeros((*decoder.shape[:-1], self.features), jnp.float32)
    carry = (zeros, zeros)
    for x in (decoder, skip):
      carry, hidden = cell(carry, x.astype(self.dtype))
    return hidden.astype(self.dtype)
