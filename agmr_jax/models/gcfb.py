"""MDANet's graph convolution fusion block (GCFB, Zhang et al. 2024, Sec. 3.3, Figs. 5-7).

The bottleneck features of the two modality groups, F_1 and F_2 (B, h, w, C) each, are embedded
as graphs G_i (N nodes x E features), concatenated along the node axis into one graph of 2N nodes,
updated by one graph convolution and mapped back:

    G_concat = [G_1; G_2]                                   (2N, E)
    G^       = ReLU(((I - A) G_concat) W)                   (6)-(7)   A: 2N x 2N, W: E x E

implemented, as the paper's Fig. 7, as two kernel-1 1D convolutions (here Dense layers, the same
thing): one over the node axis (A), one over the feature axis (W), both without bias.

Channel embedding (GCFB(channel), GloRe-style, Chen et al. 2019):
    F_theta = theta(F_i) (hw, N), F_phi = phi(F_i) (hw, E)  (1x1 convs with bias)
    G_i     = F_theta^T F_phi                               (4)   (N, E)
    F^_i    = F_theta G^_i                                  (5)   (hw, E)
    out_i   = F_i + BN(W_ext F^_i)                          (1x1 conv E -> C, no bias)
  N = C / 4 nodes, E = C / 2 features; projections shared by both groups.

Space embedding (GCFB(space), ViT-style tokens):
    G_i   = patches(F_i) + P                                (N = hw / p^2, E = p^2 C)
    out_i = F_i + unpatch(G^_i)
  with a learnable position embedding P (N, E) shared by both groups; p = 1 by default (every
  bottleneck pixel is a node). A is 2N x 2N and P is N x E, so this block's parameter count
  depends on the input size (it is fixed at init from the input shape).

`GCFBFusion` runs GCFB(channel) then GCFB(space) and returns out_1 - out_2, the decoder's input.

Choices (N, E, shared projections, the residuals the paper does not have): docs/models.md#gcfb
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers

Pair = tuple[jax.Array, jax.Array]


def stack_pair(f1: jax.Array, f2: jax.Array) -> jax.Array:
  """Two groups' (B, ...) features -> (2B, ...): shared layers then run (and batch-normalise) once."""
  return jnp.concatenate([f1, f2], axis=0)


def split_pair(x: jax.Array) -> Pair:
  """(2B, ...) -> the two groups' (B, ...) halves."""
  b = x.shape[0] // 2
  return x[:b], x[b:]


def pair_to_graph(x: jax.Array) -> jax.Array:
  """Per-group graphs (2B, N, E) -> concatenated graph (B, 2N, E): group 1's nodes first."""
  f1, f2 = split_pair(x)
  return jnp.concatenate([f1, f2], axis=1)


def graph_to_pair(g: jax.Array) -> jax.Array:
  """Concatenated graph (B, 2N, E) -> per-group graphs (2B, N, E)."""
  n = g.shape[1] // 2
  return stack_pair(g[:, :n], g[:, n:])


class GraphConv(nn.Module):
  """G' = ReLU(((I - A) G) W) for G (B, M, E) (Eqs. 6-7).

  A = `0_node_conv.kernel`^T (M x M), W = `1_feature_conv.kernel` (E x E).
  """
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, g: jax.Array) -> jax.Array:
    m, e = g.shape[1:]
    # Node axis as channels: Dense over the swapped axes gives (A G) with A = kernel^T.
    ag = nn.Dense(m, use_bias=False, dtype=self.dtype, name='0_node_conv')(
        jnp.swapaxes(g, 1, 2))
    h = g - jnp.swapaxes(ag, 1, 2)
    return nn.relu(nn.Dense(e, use_bias=False, dtype=self.dtype, name='1_feature_conv')(h))


class ChannelGCFB(nn.Module):
  """GCFB(channel): (F_1, F_2) (B, h, w, C) each -> refined pair, same shapes (Eqs. 4-6).

  Attributes:
    nodes: N; None -> max(1, C // 4).
    states: E; None -> max(1, C // 2).
    dtype: compute dtype (BN in float32).
  """
  nodes: int | None = None
  states: int | None = None
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f1: jax.Array, f2: jax.Array, *, train: bool) -> Pair:
    x = stack_pair(f1, f2)
    b2, h, w, c = x.shape
    n = self.nodes or max(1, c // 4)
    e = self.states or max(1, c // 2)
    conv = lambda features, name, bias=True: nn.Conv(  # pylint: disable=g-long-lambda
        features, (1, 1), use_bias=bias, kernel_init=layers.he_normal, dtype=self.dtype,
        name=name)
    proj = conv(n, '0_theta')(x).reshape(b2, h * w, n)
    state = conv(e, '1_phi')(x).reshape(b2, h * w, e)
    graphs = jnp.einsum('bpn,bpe->bne', proj, state)  # Eq. (4), per group.
    updated = graph_to_pair(GraphConv(dtype=self.dtype, name='2_gcn')(pair_to_graph(graphs)))
    back = jnp.einsum('bpn,bne->bpe', proj, updated).reshape(b2, h, w, e)  # Eq. (5).
    y = conv(c, '3_extend', bias=False)(back)
    y = layers.BatchNorm(use_running_average=not train, name='4_bn')(y).astype(self.dtype)
    return split_pair(x + y)


class SpaceGCFB(nn.Module):
  """GCFB(space): patches as nodes plus a position embedding; pair in, pair out.

  Attributes:
    patch_size: p; h and w must be multiples of it.
    dtype: compute dtype.
  """
  patch_size: int = 1
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f1: jax.Array, f2: jax.Array, *, train: bool) -> Pair:
    del train
    x = stack_pair(f1, f2)
    b2, h, w, c = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f'SpaceGCFB: feature {h}x{w} is not a multiple of patch size {p}')
    gh, gw = h // p, w // p
    tokens = x.reshape(b2, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
    tokens = tokens.reshape(b2, gh * gw, p * p * c)
    pos = self.param('position', nn.initializers.normal(0.02), tokens.shape[1:])
    tokens = tokens + pos.astype(tokens.dtype)
    updated = graph_to_pair(GraphConv(dtype=self.dtype, name='gcn')(pair_to_graph(tokens)))
    y = updated.reshape(b2, gh, gw, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b2, h, w, c)
    return split_pair(x + y)


class GCFBFusion(nn.Module):
  """MDANet's bottleneck: GCFB(channel) -> GCFB(space) -> out_1 - out_2 (B, h, w, C).

  Bottleneck-fusion contract (see mdanet.py): `fusion(dtype=, name=)(f1, f2, train=)`.
  """
  patch_size: int = 1
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, f1: jax.Array, f2: jax.Array, *, train: bool) -> jax.Array:
    f1, f2 = ChannelGCFB(dtype=self.dtype, name='0_channel')(f1, f2, train=train)
    f1, f2 = SpaceGCFB(self.patch_size, dtype=self.dtype, name='1_space')(f1, f2, train=train)
    return f1 - f2
