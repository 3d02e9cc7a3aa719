"""Coarse-grained patch attention (CPA, AGMR-Net Sec. 3.1) and its prior map.

CPA weights a feature map patch by patch. For F (B, H, W, C):

  F_c(x, y)   = (1/C) sum_c F(x, y, c)                              (Eq. 1)
  F_g(i, j)   = mean of F_c over patch (i, j) of a G x G grid       (Eq. 2, G = 6)
  w           = sigmoid(f_2(ReLU(f_1(flatten(F_g)))))               (Eq. 3, MLP 36 -> 18 -> 36)
  A(x, y)     = w(patch of (x, y))                                  (Eq. 4, nearest upsampling)
  Y           = A * F + F                                           (residual weighting)

and returns Y together with the G x G attention *logits* (B, G, G) in float32; the loss compares
sigmoid(logits) with the prior map (the ground truth max-pooled over the same grid) by binary
cross-entropy, which is numerically safer on logits.

Patch grid: patch p along an axis of S pixels covers rows [floor(p S / G), ceil((p + 1) S / G))
(PyTorch's adaptive pooling: exact 32 x 32 patches at 192 x 192, slightly overlapping ones when G
does not divide S, never empty); upsampling gives row r the value of patch floor(r G / S)
(PyTorch 'nearest'). Both are small constant matrices applied by einsum (no gather/scatter).

`FineGrainedAttention` is the comparison of Table 6 ("Baseline + FA", CBAM's spatial attention).

Choices (nearest vs "linear" upsampling, the grid, bias-free MLPs): docs/models.md#cpa
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agmr_jax.models import layers

Dtype = layers.Dtype


def patch_bounds(size: int, grid: int) -> list[tuple[int, int]]:
  """[start, stop) of each of `grid` adaptive patches along an axis of `size` pixels."""
  if size < 1 or grid < 1:
    raise ValueError(f'patch_bounds: size and grid must be positive, got {size}, {grid}')
  return [(p * size // grid, -(-(p + 1) * size // grid)) for p in range(grid)]


def _pool_matrix(size: int, grid: int) -> np.ndarray:
  """(grid, size): row p averages the pixels of patch p."""
  m = np.zeros((grid, size), np.float32)
  for p, (start, stop) in enumerate(patch_bounds(size, grid)):
    m[p, start:stop] = 1.0 / (stop - start)
  return m


def _upsample_matrix(size: int, grid: int) -> np.ndarray:
  """(size, grid): pixel r takes the value of patch floor(r * grid / size)."""
  m = np.zeros((size, grid), np.float32)
  m[np.arange(size), np.arange(size) * grid // size] = 1.0
  return m


def patch_average(x: jax.Array, grid: int) -> jax.Array:
  """(B, H, W) -> (B, grid, grid) patch means (Eq. 2), float32."""
  ph = jnp.asarray(_pool_matrix(x.shape[1], grid))
  pw = jnp.asarray(_pool_matrix(x.shape[2], grid))
  return jnp.einsum('ph,bhw,qw->bpq', ph, x.astype(jnp.float32), pw)


def patch_upsample(a: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(B, G, G) -> (B, H, W): every pixel takes its patch's value (Eq. 4), float32."""
  uh = jnp.asarray(_upsample_matrix(size[0], a.shape[1]))
  uw = jnp.asarray(_upsample_matrix(size[1], a.shape[2]))
  return jnp.einsum('hp,bpq,wq->bhw', uh, a.astype(jnp.float32), uw)


def prior_map(mask: jax.Array, grid: int = 6) -> jax.Array:
  """The CPA prior: 1 where a patch of the grid holds any lesion pixel, else 0.

  mask (B, H, W), values >= 0 (any positive value is lesion) -> (B, grid, grid) float32: the
  ground truth max-pooled over the same adaptive patch grid CPA averages over (at 192 x 192,
  the paper's 32 x 32 pooling windows). Targets only, so no gradient concerns: plain slices.
  """
  if mask.ndim != 3:
    raise ValueError(f'prior_map expects a (B, H, W) mask, got shape {mask.shape}')
  lesion = (mask > 0).astype(jnp.float32)
  rows = jnp.stack([jnp.max(lesion[:, a:b, :], axis=1)
                    for a, b in patch_bounds(mask.shape[1], grid)], axis=1)
  return jnp.stack([jnp.max(rows[:, :, a:b], axis=2)
                    for a, b in patch_bounds(mask.shape[2], grid)], axis=2)


class CPA(nn.Module):
  """Coarse-grained patch attention: (B, H, W, C) -> ((B, H, W, C), logits (B, G, G)).

  Follows DUNet's `stage_attention` contract: `CPA(dtype=, name=)(x, *, train) -> (y, aux)`.
  Parameters: f_1 (G^2 -> hidden) and f_2 (hidden -> G^2), by default without biases:
  36 * 18 + 18 * 36 = 1,296 per module at G = 6 (1,350 with biases).

  Attributes:
    grid: G, patches per side (6 in the paper).
    hidden: width of f_1; None -> G^2 // 2 (18 in the paper).
    use_bias: biases in f_1 and f_2.
    dtype: compute dtype of the output; the attention itself runs in float32.
  """
  grid: int = 6
  hidden: int | None = None
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    del train  # No BN or dropout; kept for the stage_attention contract.
    if x.ndim != 4:
      raise ValueError(f'CPA expects (B, H, W, C), got shape {x.shape}')
    b, h, w, _ = x.shape
    n = self.grid * self.grid
    descriptors = patch_average(jnp.mean(x.astype(jnp.float32), axis=-1), self.grid)
    dense = functools.partial(nn.Dense, use_bias=self.use_bias, kernel_init=layers.he_normal,
                              dtype=jnp.float32)
    z = dense(self.hidden or n // 2, name='0_f1')(descriptors.reshape(b, n))
    logits = dense(n, name='1_f2')(nn.relu(z)).reshape(b, self.grid, self.grid)
    attention = patch_upsample(nn.sigmoid(logits), (h, w))
    self.sow('intermediates', 'attention', attention)
    x = x.astype(self.dtype)
    return x * (1.0 + attention[..., None]).astype(self.dtype), logits


class FineGrainedAttention(nn.Module):
  """CBAM's spatial attention, the "Baseline + FA" row of Table 6 (same contract as CPA).

    M = sigmoid(W *_{7x7} [mean_c(F); max_c(F)] + b),  Y = M * F
  (B, H, W, C) -> ((B, H, W, C), M (B, H, W) float32). Unsupervised: the loss ignores M.
  """
  kernel_size: int = 7
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    del train
    xf = x.astype(jnp.float32)
    pooled = jnp.stack([jnp.mean(xf, axis=-1), jnp.max(xf, axis=-1)], axis=-1)
    k = (self.kernel_size, self.kernel_size)
    m = nn.sigmoid(nn.Conv(1, k, padding='SAME', kernel_init=layers.he_normal,
                           dtype=jnp.float32, name='conv')(pooled))[..., 0]
    return (xf * m[..., None]).astype(self.dtype), m

