"""MDANet's alternative bottleneck fusions (Zhang et al. 2024, Sec. 4.5.3, Table 5).

Each has the bottleneck-fusion contract of mdanet.py, `fusion(dtype=, name=)(f1, f2, train=)`
with the two groups' bottleneck features (B, h, w, C) -> difference map (B, h, w, C), and, like
GCFB, two layers: the first lets each group attend to itself (queries, keys and values from the
same group), the second across groups (queries from one group, keys and values from the other),
then the updated features are subtracted. Weights are shared by both groups (the encoder's
weights are too).

  'none'        F_1 - F_2 (no fusion block; Table 5's "Baseline").
  'nonlocal'    embedded-Gaussian non-local blocks (Wang et al. 2018):
                z = x_q + BN(W_z softmax(theta(x_q) phi(x_kv)^T) g(x_kv)), inner width C / 2,
                BN scale initialised to 0 so each block starts as the identity (as in the paper
                that introduced it).
  'transformer' pre-norm transformer layers (ViT): x = x_q + MHA(LN(x_q), LN(x_kv));
                x = x + MLP(LN(x)) with MLP C -> 4C -> C (GELU), 8 heads, and a learnable
                position embedding added to the tokens first.

Choices and Table 5's counts: docs/models.md#alternative-bottleneck-fusions
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers
from agmr_jax.models.gcfb import split_pair
from agmr_jax.models.gcfb import stack_pair


class SubtractFusion(nn.Module):
  """No fusion block: F_1 - F_2."""
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f1: jax.Array, f2: jax.Array, *, train: bool) -> jax.Array:
    del train
    return f1 - f2


class NonLocalBlock(nn.Module):
  """z = x_q + BN(W_z softmax(theta(x_q) phi(x_kv)^T) g(x_kv)); (B, h, w, C) -> same."""
  inter_features: int | None = None
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_q: jax.Array, x_kv: jax.Array, *, train: bool) -> jax.Array:
    b, h, w, c = x_q.shape
    inter = self.inter_features or max(1, c // 2)
    conv = lambda features, name: nn.Conv(  # pylint: disable=g-long-lambda
        features, (1, 1), kernel_init=layers.he_normal, dtype=self.dtype, name=name)
    theta = conv(inter, '0_theta')(x_q).reshape(b, h * w, inter)
    phi = conv(inter, '1_phi')(x_kv).reshape(b, h * w, inter)
    g = conv(inter, '2_g')(x_kv).reshape(b, h * w, inter)
    logits = jnp.einsum('bqi,bki->bqk', theta, phi).astype(jnp.float32)
    y = jnp.einsum('bqk,bki->bqi', nn.softmax(logits, axis=-1).astype(self.dtype), g)
    y = conv(c, '3_out')(y.reshape(b, h, w, inter))
    y = layers.BatchNorm(use_running_average=not train, scale_init=nn.initializers.zeros,
                         name='4_bn')(y)
    return (x_q + y).astype(self.dtype)


class NonLocalFusion(nn.Module):
  """Self non-local layer, then cross non-local layer, then F_1' - F_2'."""
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f1: jax.Array, f2: jax.Array, *, train: bool) -> jax.Array:
    x = stack_pair(f1, f2)
    x = NonLocalBlock(dtype=self.dtype, name='0_self')(x, x, train=train)
    a, b = split_pair(x)
    x = NonLocalBlock(dtype=self.dtype, name='1_cross')(x, stack_pair(b, a), train=train)
    a, b = split_pair(x)
    return a - b


class TransformerLayer(nn.Module):
  """Pre-norm transformer layer on tokens (B, T, C), keys/values from `kv` (B, T', C)."""
  num_heads: int = 8
  mlp_ratio: int = 4
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, kv: jax.Array) -> jax.Array:
    c = x.shape[-1]
    heads = self.num_heads if c % self.num_heads == 0 else 1
    q_in = nn.LayerNorm(dtype=self.dtype, name='0_norm_q')(x)
    kv_in = nn.LayerNorm(dtype=self.dtype, name='1_norm_kv')(kv)
    x = x + nn.MultiHeadDotProductAttention(num_heads=heads, dtype=self.dtype, name='2_attention')(
        q_in, kv_in)
    y = nn.LayerNorm(dtype=self.dtype, name='3_norm_mlp')(x)
    y = nn.gelu(nn.Dense(self.mlp_ratio * c, dtype=self.dtype, name='4_mlp_in')(y))
    return x + nn.Dense(c, dtype=self.dtype, name='5_mlp_out')(y)


class TransformerFusion(nn.Module):
  """Position embedding, self-attention layer, cross-attention layer, then F_1' - F_2'."""
  num_heads: int = 8
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f1: jax.Array, f2: jax.Array, *, train: bool) -> jax.Array:
    del train
    b, h, w, c = f1.shape
    x = stack_pair(f1, f2).reshape(2 * b, h * w, c)
    pos = self.param('position', nn.initializers.normal(0.02), (h * w, c))
    x = x + pos.astype(x.dtype)
    x = TransformerLayer(self.num_heads, dtype=self.dtype, name='0_self')(x, x)
    a, o = split_pair(x)
    x = TransformerLayer(self.num_heads, dtype=self.dtype, name='1_cross')(x, stack_pair(o, a))
    a, o = split_pair(x)
    return (a - o).reshape(b, h, w, c)
