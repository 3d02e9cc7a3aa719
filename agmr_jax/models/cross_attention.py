"""Additive cross-attention gate of the thesis's U-Net (seed 003, sec. 4.1, Fig. 5).

The gate filters an encoder skip feature X_e with the decoder feature X_d of the
same level before the two are concatenated:

  S     = ReLU(W_e^T X_e + W_d^T X_d)            (B, H, W, F_int)   eq. of sec. 4.1
  alpha = sigmoid(W_S^T S)                        (B, H, W, 1)
  X_re  = alpha * X_e                             (B, H, W, C_e)

W_e, W_d and W_S are 1x1 convolutions ("linear projections ... using convolution
branches"), so the gate works pixel by pixel. alpha is one map broadcast over all
C_e channels of X_e.

X_d is the coarser decoder output *after* its bilinear x2 upsampling (the tensor
concatenated next to X_re), so both inputs have the same H and W and no
resampling happens inside the gate (unlike attention_unet.AttentionGate).
F_int = max(1, C_e // 2) unless `inter_features` is given; W_e has no bias, W_d
and W_S have one; no BatchNorm and no output projection.
alpha is computed in float32 and sown as intermediates['alpha']; it lies in
(0, 1) except where float32 sigmoid saturates (|W_S^T S| above about 17 / 88).

Choices ("same scale", widths, biases): docs/models.md#cross-attention-u-net
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers


class CrossAttentionGate(nn.Module):
  """X_re = sigmoid(W_S ReLU(W_e X_e + W_d X_d)) * X_e, all 1x1 convs.

  Call: `gate(x_enc, g_dec)` with x_enc (B, H, W, C_e) the encoder skip and
  g_dec (B, H, W, C_d) the upsampled decoder feature of the same level;
  returns (B, H, W, C_e) in `dtype`.

  Attributes:
    inter_features: F_int, width of S; None -> max(1, C_e // 2).
    dtype: compute dtype of the convs; alpha and the product are float32,
      then cast back.
  """
  inter_features: int | None = None
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_enc: jax.Array, g_dec: jax.Array) -> jax.Array:
    if x_enc.shape[:3] != g_dec.shape[:3]:
      raise ValueError(
          f'CrossAttentionGate: encoder {x_enc.shape} and decoder {g_dec.shape} features must '
          'share batch, H and W (the decoder feature is gated after upsampling)')
    inter = self.inter_features or max(1, x_enc.shape[-1] // 2)
    proj_e = nn.Conv(inter, (1, 1), use_bias=False, kernel_init=layers.he_normal,
                     dtype=self.dtype, name='0_w_enc')(x_enc)
    proj_d = nn.Conv(inter, (1, 1), kernel_init=layers.he_normal, dtype=self.dtype,
                     name='1_w_dec')(g_dec)
    s = nn.relu(proj_e + proj_d)
    score = nn.Conv(1, (1, 1), kernel_init=layers.he_normal, dtype=self.dtype,
                    name='2_w_s')(s)
    alpha = nn.sigmoid(score.astype(jnp.float32))
    self.sow('intermediates', 'alpha', alpha)
    return (alpha * x_enc.astype(jnp.float32)).astype(self.dtype)
