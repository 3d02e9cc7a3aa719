"""MDANet's difference aware skip connection (DASC, Zhang et al. 2024, Sec. 3.2, Fig. 4).

At every skip level the two modality groups' encoder features meet:

    F_D  = F_m1 - F_m2                                     (1)
    W    = sigmoid(theta_1(theta_2(F_D) + theta_3(F_de)))  (2)
    F^_D = F_D + W * F_D                                   (3)

F_de is the decoder's (difference-derived) feature one level deeper, the one the decoder stage
is about to upsample; theta_i are point-wise (1x1) convolutions with bias. Shapes: F_D
(B, H, W, C), F_de (B, H/2, W/2, C_de); theta_2: C -> C_int, theta_3: C_de -> C_int (applied
at H/2 x W/2, then nearest-upsampled: a 1x1 conv commutes with nearest upsampling, so this
equals upsampling first at a quarter of the cost), theta_1: C_int -> 1, so W is one attention
map (B, H, W, 1) shared by all channels. C_int = C / 2 by default. As in Eq. (2), there is no
non-linearity between theta_2/theta_3 and theta_1: the sigmoid's argument is affine in
(F_D, F_de).

`GroupSkip` builds the skip feature from the two groups: 'subtract' is Eq. (1); 'add' and
'concat' (a 1x1 conv 2C -> C after concatenation) are the alternatives of the paper's Table 4.

Choices (F_de, C_int, one shared map, no ReLU): docs/models.md#dasc
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers

SKIP_MODES = ('subtract', 'add', 'concat')


class DASC(nn.Module):
  """Eqs. (2)-(3): refines the difference map F_D under the guidance of the decoder feature.

  Called as DecoderStage's skip gate: `DASC(dtype=, name=)(f_d, f_de, train=)`.
  The attention map W is sown as intermediates['attention'].

  Attributes:
    inter_features: C_int; None -> max(1, C // 2).
    dtype: compute dtype; the sigmoid is evaluated in float32.
  """
  inter_features: int | None = None
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f_d: jax.Array, f_de: jax.Array, *, train: bool) -> jax.Array:
    del train  # no BN or dropout: Eq. (2) is three plain point-wise convolutions.
    b, h, w, c = f_d.shape
    if f_de.shape[:3] != (b, h // 2, w // 2):
      raise ValueError(f'DASC: decoder feature {f_de.shape} must be half the size of {f_d.shape}')
    inter = self.inter_features or max(1, c // 2)
    conv = lambda features, name: nn.Conv(  # pylint: disable=g-long-lambda
        features, (1, 1), kernel_init=layers.he_normal, dtype=self.dtype, name=name)
    skip = conv(inter, '0_theta2')(f_d)
    guide = layers.upsample_nearest_2x(conv(inter, '1_theta3')(f_de.astype(self.dtype)))
    logit = conv(1, '2_theta1')(skip + guide)
    attention = nn.sigmoid(logit.astype(jnp.float32))
    self.sow('intermediates', 'attention', attention)
    f_d32 = f_d.astype(jnp.float32)
    return (f_d32 + attention * f_d32).astype(self.dtype)


class GroupSkip(nn.Module):
  """Skip feature of two group features (B, H, W, C) each -> (B, H, W, C).

  Attributes:
    mode: 'subtract' F_m1 - F_m2 (Eq. 1, MDANet); 'add' F_m1 + F_m2; 'concat'
      W *_{1x1} [F_m1, F_m2] + b (Table 4's alternatives).
    dtype: compute dtype.
  """
  mode: str = 'subtract'
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f_m1: jax.Array, f_m2: jax.Array) -> jax.Array:
    if self.mode == 'subtract':
      return f_m1 - f_m2
    if self.mode == 'add':
      return f_m1 + f_m2
    if self.mode == 'concat':
      y = jnp.concatenate([f_m1, f_m2], axis=-1)
      return nn.Conv(f_m1.shape[-1], (1, 1), kernel_init=layers.he_normal, dtype=self.dtype,
                     name='conv')(y)
    raise ValueError(f'GroupSkip.mode must be one of {SKIP_MODES}, got {self.mode!r}')
