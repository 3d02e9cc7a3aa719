"""MDANet (Zhang et al. 2024): multimodal difference aware network for stroke segmentation.

The input channels are split into two modality groups (ISLES 2018: {CBF, CBV} vs {MTT, Tmax},
lesion dark vs bright; ISLES 2022: DWI vs ADC), given by `groups` (channels per group, in input
order; train.build_model passes the recipe's).

  stage 1   per group, own weights: block(x_i) -> F_i^1 (B, H, W, c_1); also returned as
            out['group_features'] for the similarity loss (objectives/mdanet.py).
  encoder   shared weights: levels 2..L, 2x2 max-pool then block; both groups run as one batch
            of 2B (so BatchNorm statistics are common to both groups in training as they are at
            inference, where the running averages are necessarily shared).
  skips     levels 1..L-1: F_D = F_m1 - F_m2 (dasc.GroupSkip), refined by DASC with the deeper
            decoder feature (dasc.DASC) -- the skip gate of layers.DecoderStage.
  bottleneck  level L: GCFB(channel) -> GCFB(space) -> F_1' - F_2' (gcfb.py).
  decoder   L-1 layers.DecoderStage: 2x2 transposed conv (stride 2), concat [DASC(skip), up],
            two 3x3 conv-BN-ReLU.
  head      1x1 conv -> num_classes float32 logits.

block = msc.MSC (chains of 1/2/3 3x3 convs, widths C/2, C/4, C/4) or, with msc=False, the
U-Net double conv. Ablations: `skip` in {'subtract', 'add', 'concat'} (Table 4), `fusion` in
{'gcfb', 'nonlocal', 'transformer', 'none'} (Table 5), `msc` (Table 3); the similarity loss is
the objective's `lam` (Tables 3 and 6).

Size. Widths 64/128/256/512/1024 (the defaults; the paper gives none) at the documented ISLES
2018 input 128x128x4 (configs/mdanet.py): 24,341,285 parameters (count_params, BN 4 per channel;
GCFB 2,970,368 of them) and 11.70 G multiply-adds (XLA flops / 2 of the jitted forward pass,
batch 1, train=False), against the paper's 25.3 M and 11.22 GFLOPs (Table 1). The count moves
with the input size only through GCFB(space) (A is 2N x 2N, the position embedding N x C for N
bottleneck pixels). The decoder's up path is the PyTorch U-Net's 2x2 transposed conv
(UpsampleTransposed).

Why these widths and this input size, ISLES 2022 and Table 5 counts: docs/models.md#mdanet

Shapes: (B, H, W, sum(groups)) -> {'logits': (B, H, W, num_classes) float32,
'group_features': ((B, H, W, c_1), (B, H, W, c_1))}; H, W multiples of 2^(L-1) (times
`patch_size` for GCFB(space)).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers
from agmr_jax.models.dasc import DASC
from agmr_jax.models.dasc import GroupSkip
from agmr_jax.models.gcfb import GCFBFusion
from agmr_jax.models.gcfb import split_pair
from agmr_jax.models.gcfb import stack_pair
from agmr_jax.models.global_fusion import NonLocalFusion
from agmr_jax.models.global_fusion import SubtractFusion
from agmr_jax.models.global_fusion import TransformerFusion
from agmr_jax.models.msc import MSC

ModuleDef = layers.ModuleDef

# Bottleneck fusions, all `fusion(dtype=, name=)(f1, f2, *, train) -> (B, h, w, C)`.
FUSIONS: dict[str, ModuleDef] = {
    'gcfb': GCFBFusion,
    'nonlocal': NonLocalFusion,
    'transformer': TransformerFusion,
    'none': SubtractFusion,
}


class TransposedConv2x2(nn.Module):
  """`nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding='VALID')` as a matrix product.

  With the kernel as large as the stride the output windows do not overlap: output pixel
  (2i + a, 2j + b) is x[i, j] @ K[1 - a, 1 - b] + bias (lax.conv_transpose without
  transpose_kernel flips the kernel). So the layer is one (B H W, C_in) x (C_in, 4 C_out) matrix
  product followed by depth-to-space. Same parameters ('kernel' (2, 2, C_in, C_out), 'bias'
  (C_out,)), same initialisers and the same function as nn.ConvTranspose; but its gradients are
  matrix products too, where autodiff of lax.conv_transpose gives base-dilated convolutions
  that XLA:CPU runs in its slow generic emitter (docs/performance.md).

  Attributes:
    features: output channels C_out.
    kernel_init: initialiser of the (2, 2, C_in, C_out) kernel.
    dtype: compute dtype; params float32.
  """
  features: int
  kernel_init: nn.initializers.Initializer = layers.he_normal
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c_in = x.shape
    kernel = self.param('kernel', self.kernel_init, (2, 2, c_in, self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    # kernel[::-1, ::-1][i, j]: the (C_in, C_out) matrix of output offset (i, j) in each window.
    y = jnp.einsum('nhwc,ijcd->nhiwjd', x, kernel[::-1, ::-1])
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias


class UpsampleTransposed(nn.Module):
  """x2 up path of the PyTorch U-Net: 2x2 transposed conv, stride 2, with bias, no activation.

  (B, H, W, C_in) -> (B, 2H, 2W, features); DecoderStage's `upsample` contract. Same parameter
  count as layers.UpsampleConv (4 C_in C + C) at a quarter of its multiply-adds
  (docs/models.md#mdanet). Computed by TransposedConv2x2 (a matrix product plus depth-to-space,
  parameter tree {'conv': {'kernel', 'bias'}} of nn.ConvTranspose).
  """
  features: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train
    return TransposedConv2x2(self.features, kernel_init=layers.he_normal, dtype=self.dtype,
                             name='conv')(x)


class MDANet(nn.Module):
  """MDANet; fields default to the paper (module docstring), keywords override.

  Parameter tree, in network order: 0_stage1_group1, 0_stage1_group2, 1_down_2 .. 1_down_L,
  2_skip_1 .. 2_skip_{L-1} (parameters only for skip='concat'), 3_bottleneck, 4_up_1
  (coarsest) .. 4_up_{L-1} (each with its DASC as 1_gate), 5_head.

  Attributes:
    features: widths per level, finest first.
    groups: input channels per modality group (exactly two groups).
    num_classes: output channels.
    msc: MSC encoder blocks (False: the U-Net double conv).
    skip: how the groups' features form the skip ('subtract' = F_D).
    fusion: key of FUSIONS.
    patch_size: GCFB(space) patch size.
    upsample: decoder up path (layers.DecoderStage contract).
    dtype: compute dtype; params, BN and logits float32.
  """
  features: tuple[int, ...] = (64, 128, 256, 512, 1024)
  groups: tuple[int, ...] = (2, 2)
  num_classes: int = 1
  msc: bool = True
  skip: str = 'subtract'
  fusion: str = 'gcfb'
  patch_size: int = 1
  upsample: ModuleDef = UpsampleTransposed
  dtype: layers.Dtype = jnp.float32

  def _block(self, features: int, name: str) -> nn.Module:
    if self.msc:
      return MSC(features, dtype=self.dtype, name=name)
    return layers.DoubleConv(features, dtype=self.dtype, name=name)

  def _check(self, x: jax.Array) -> None:
    layers.check_divisible(x, 2 ** (len(self.features) - 1), 'MDANet')
    if len(self.groups) != 2 or sum(self.groups) != x.shape[-1] or min(self.groups) < 1:
      raise ValueError(f'MDANet: groups {self.groups} must be two positive channel counts '
                       f'summing to the input channels ({x.shape[-1]})')
    if self.fusion not in FUSIONS:
      raise ValueError(f'MDANet: unknown fusion {self.fusion!r}; known: {", ".join(FUSIONS)}')

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict:
    self._check(x)
    x = x.astype(self.dtype)
    g1 = self.groups[0]
    f1 = self._block(self.features[0], '0_stage1_group1')(x[..., :g1], train=train)
    f2 = self._block(self.features[0], '0_stage1_group2')(x[..., g1:], train=train)
    skips = [GroupSkip(self.skip, dtype=self.dtype, name='2_skip_1')(f1, f2)]
    h = stack_pair(f1, f2)
    levels = len(self.features)
    for level in range(2, levels + 1):
      h = self._block(self.features[level - 1], f'1_down_{level}')(
          layers.max_pool_2x2(h), train=train)
      if level < levels:
        skips.append(GroupSkip(self.skip, dtype=self.dtype, name=f'2_skip_{level}')(
            *split_pair(h)))
    extra = {'patch_size': self.patch_size} if self.fusion == 'gcfb' else {}
    y = FUSIONS[self.fusion](**extra, dtype=self.dtype, name='3_bottleneck')(
        *split_pair(h), train=train)
    for i, level in enumerate(range(levels - 1, 0, -1), start=1):
      y = layers.DecoderStage(
          self.features[level - 1], upsample=self.upsample, skip_gate=DASC,
          dtype=self.dtype, name=f'4_up_{i}')(y, skips[level - 1], train=train)
    logits = layers.Head(self.num_classes, name='5_head')(y)
    return {'logits': logits, 'group_features': (f1, f2)}
