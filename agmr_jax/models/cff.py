"""Cross-dimensional feature fusion (CFF, AGMR-Net Sec. 3.2).

Fuses the 3D branch into the 2D encoder at levels 2 and 3, in place of D-UNet's SE-add:

  3D_t  = ReLU(BN(W_3x3 * T(W_1x1x1 * x3d)))   (B, D, H, W, C3) -> (B, H, W, C)
  g     = [GAP(3D_t); GAP(2D)]                 (B, 2C)                                   (Eq. 5)
  w_2   = sigmoid(f_2^2(ReLU(f_1^2(g))))        (B, C)                                    (Eq. 6)
  w_3   = sigmoid(f_2^3(ReLU(f_1^3(g))))        (B, C)                                    (Eq. 7)
  out   = 3D_t * w_3 + 2D * w_2                 (B, H, W, C)                              (Eq. 8)

MLPs (no biases): by default two MLPs 2C -> C/R -> C (the text; 6 C^2 / R weights);
`shared_hidden=True` uses one first layer 2C -> 2C/R shared by both outputs (the Table 8
formula; 8 C^2 / R). 3D_t's 3x3 conv is followed by BN (`project_bn=True`); `project_bn=False`
reuses D-UNet's BN-free dunet.Project3DTo2D. `combine='concat'` is Table 7's "CFF-Concat":
out = ReLU(W_1x1 * [3D_t * w_3; 2D * w_2] + b).

Follows DUNet's fusion contract: `CFF(features=C, dtype=, name=)(x3d, x2d, *, train)`.

Why the text's MLP widths and the projection BN (Table 9's count): docs/models.md#cff
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import dunet
from agmr_jax.models import layers

Dtype = layers.Dtype


class Project3DTo2DBN(nn.Module):
  """dunet.Project3DTo2D with BN before the ReLU: 3D_t = ReLU(BN(W_3x3 * T(W_1x1x1 * x3d))).

  x3d (B, D, H, W, C3) -> (B, H, W, features). AGMR-Net follows every conv with BN and ReLU
  (Sec. 4.2); D-UNet's Keras projection has no BN.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x3d: jax.Array, *, train: bool) -> jax.Array:
    if x3d.ndim != 5:
      raise ValueError(f'Project3DTo2DBN expects (B, D, H, W, C), got {x3d.shape}')
    y = layers.Conv3D(1, (1, 1, 1), dtype=self.dtype, name='0_squeeze3d')(x3d)
    y = jnp.transpose(y[..., 0], (0, 2, 3, 1))
    return layers.ConvBNReLU(self.features, dtype=self.dtype, name='1_conv2d')(y, train=train)


class CFF(nn.Module):
  """Cross-dimensional feature fusion: x3d (B, D, H, W, C3), x2d (B, H, W, C) -> (B, H, W, C).

  Attributes:
    features: C, the 2D width at this level.
    ratio: R, the reduction ("decay") rate: 8 in the paper, 32 in Table 8.
    shared_hidden: False: two MLPs 2C -> C/R -> C (the text); True: one f_1 of width 2C/R
      shared by both weight vectors (the Table 8 formula). See the module docstring.
    project_bn: BN in the 3D -> 2D projection (Project3DTo2DBN) or D-UNet's projection.
    combine: 'add' (Eq. 8) or 'concat' (Table 7's CFF-Concat).
    dtype: compute dtype.
  """
  features: int
  ratio: int = 8
  shared_hidden: bool = False
  project_bn: bool = True
  combine: str = 'add'
  dtype: Dtype = jnp.float32

  def _dense(self, width: int, name: str) -> nn.Dense:
    return nn.Dense(width, use_bias=False, kernel_init=layers.he_normal, dtype=self.dtype,
                    name=name)

  def _weights(self, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """g (B, 2C) -> (w_2, w_3), each (B, C), Eqs. 6-7."""
    c = self.features
    if self.shared_hidden:
      h2 = h3 = nn.relu(self._dense(max(1, 2 * c // self.ratio), '1_f1')(g))
    else:
      h2 = nn.relu(self._dense(max(1, c // self.ratio), '1_f1_2d')(g))
      h3 = nn.relu(self._dense(max(1, c // self.ratio), '1_f1_3d')(g))
    w2 = nn.sigmoid(self._dense(c, '2_f2_2d')(h2))
    w3 = nn.sigmoid(self._dense(c, '2_f2_3d')(h3))
    return w2, w3

  @nn.compact
  def __call__(self, x3d: jax.Array, x2d: jax.Array, *, train: bool) -> jax.Array:
    if x2d.shape[-1] != self.features:
      raise ValueError(f'CFF: 2D feature has {x2d.shape[-1]} channels, expected {self.features}')
    if self.combine not in ('add', 'concat'):
      raise ValueError(f"CFF.combine must be 'add' or 'concat', got {self.combine!r}")
    if self.project_bn:
      t = Project3DTo2DBN(self.features, dtype=self.dtype, name='0_project')(x3d, train=train)
    else:
      t = dunet.Project3DTo2D(self.features, dtype=self.dtype, name='0_project')(x3d)
    x2d = x2d.astype(self.dtype)
    # Global average pools in float32 (a sum over H*W positions), then back to compute dtype.
    g = jnp.concatenate([jnp.mean(t.astype(jnp.float32), axis=(1, 2)),
                         jnp.mean(x2d.astype(jnp.float32), axis=(1, 2))], axis=-1)
    w2, w3 = self._weights(g.astype(self.dtype))
    a = t * w3[:, None, None, :]
    b = x2d * w2[:, None, None, :]
    if self.combine == 'add':
      return a + b
    y = nn.Conv(self.features, (1, 1), kernel_init=layers.he_normal, dtype=self.dtype,
                name='3_conv')(jnp.concatenate([a, b], axis=-1))
    return nn.relu(y)
