"""Attention U-Net (Oktay et al., 2018): the U-Net of unet.py with an additive
attention gate on every skip connection.

Each decoder stage gates its skip x (B, H, W, C) with the coarser decoder
feature g (B, H/2, W/2, C_g) it is about to upsample (the deepest stage uses the
bottleneck), then proceeds as the plain U-Net. Everything else (widths, dropout,
up path, head, float32 logits) is unet.UNet.

Parameters at the defaults (Keras counting): the U-Net's 7,772,161 (4 input
channels) plus 4 C^2 + 6 C + 1 per gate for C = 256, 128, 64, 32, i.e. 351,044:
8,123,205 in all (8,122,341 for 1 input channel).

Choices and paper numbers: docs/models.md#u-net-and-attention-u-net
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers
from agmr_jax.models.unet import UNet

ModuleDef = layers.ModuleDef


class AttentionGate(nn.Module):
  """Additive attention gate, Oktay et al. (grid attention, sub-sampling 2).

    q     = ReLU(W_x *_{2x2, stride 2} x + W_g *_{1x1} g + b_g)
    alpha = sigmoid(psi *_{1x1} q + b_psi)                 (B, H/2, W/2, 1)
    y     = BN(W_out *_{1x1} (up_bilinear(alpha) * x))     (B, H, W, C)

  x: skip (B, H, W, C); g: gating signal at half resolution (B, H/2, W/2, C_g).
  The intermediate width is C // 2 unless `inter_features` is given.
  alpha at full resolution is sown as intermediates['alpha'] for inspection.
  """
  inter_features: int | None = None
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, g: jax.Array, *, train: bool) -> jax.Array:
    c = x.shape[-1]
    if g.shape[1:3] != (x.shape[1] // 2, x.shape[2] // 2):
      raise ValueError(f'AttentionGate: gating {g.shape} must be half the size of skip {x.shape}')
    inter = self.inter_features or max(1, c // 2)
    theta = nn.Conv(inter, (2, 2), strides=2, padding='VALID', use_bias=False,
                    kernel_init=layers.he_normal, dtype=self.dtype, name='0_theta_x')(x)
    phi = nn.Conv(inter, (1, 1), kernel_init=layers.he_normal, dtype=self.dtype,
                  name='1_phi_g')(g)
    q = nn.relu(theta + phi)
    psi = nn.Conv(1, (1, 1), kernel_init=layers.he_normal, dtype=self.dtype, name='2_psi')(q)
    alpha = layers.upsample_bilinear_2x(nn.sigmoid(psi.astype(jnp.float32)))
    self.sow('intermediates', 'alpha', alpha)
    y = (alpha * x.astype(jnp.float32)).astype(self.dtype)
    return layers.ConvBNReLU(c, kernel_size=(1, 1), activation=None, dtype=self.dtype,
                             name='3_out')(y, train=train)


class AttentionUNet(UNet):
  """UNet with `skip_gate=AttentionGate` as its default; all other fields as UNet.

  A subclass that only changes a default (rather than a functools.partial) so the
  registry entry is a real dataclass: `__dataclass_fields__`, isinstance and
  error messages naming the model keep working.
  """
  skip_gate: ModuleDef | None = AttentionGate
