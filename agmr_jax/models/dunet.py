"""D-UNet (Zhou et al., 2019): a 2D U-Net with a 3D branch over neighbouring slices.

Re-expressed from the structure of the public Keras code (SZUHvern/D-UNet,
`D_Unet()` with `D_SE_Add` fusion). Input (B, 192, 192, 4): slices at offsets
-2, -1, 0, +1 as channels.

  2D encoder  5 levels 32/64/128/256/512: two 3x3 conv(+bias)-BN-ReLU per level,
              2x2 max-pool between levels, dropout 0.3 after levels 4 and 5.
  3D stem     the 4 slices as depth, x3d = (B, D=4, H, W, 1); two 3x3x3
              conv(+bias)-BN-ReLU per level, 2x2x2 max-pool (halves D, H, W):
              32 @ 4x192x192 -> 64 @ 2x96x96 -> 128 @ 1x48x48.
  fusion      at levels 2 and 3 (after the 2D level block, before its pool):
              p  = ReLU(conv3x3(depth_to_channels(conv1x1x1(x3d) -> 1 channel)))
              y  = SE(p) + SE(x2d)                 SE: ratio 16, Dense without bias
  decoder     4 levels: nearest x2 upsample, 2x2 conv(+bias) + ReLU (no BN),
              concat [skip, up], two 3x3 conv-BN-ReLU.
  head        1x1 conv to num_classes float32 logits (sigmoid is the loss's job).

Parameter count at the defaults, BN counted 4 per channel (Keras): 2D encoder
4,720,448, 3D stem 860,192, fusion L2 2,305 and L3 5,505, decoder + head 3,051,713
(up convs 696,800): 8,640,163 in all, 8,633,379 in 'params' (6,784 BN moving statistics).
Choices, per-level breakdown and paper numbers: docs/models.md#d-unet

Reuse (AGMR-Net = D-UNet + CPA + CFF + MDU) goes through three factory fields,
each a linen Module constructor (pass a functools.partial to bind options):
  fusion(features=C, dtype=, name=)(x3d, x2d, *, train) -> (B, H, W, C)
      x3d (B, D, H, W, C3) is the 3D stem's feature at that level. CFF replaces
      SEAddFusion; `Project3DTo2D` is the shared 3D -> 2D projection.
  upsample(features=f, dtype=, name=)(x, *, train) -> (B, 2H, 2W, any)
      MDU replaces UpsampleConv in all 4 decoder stages.
  stage_attention(dtype=, name=)(x, *, train) -> (y, aux)
      applied after every 2D level block (before fusion, as AGMR's Table 2);
      the auxes come back in level order as out['encoder_aux'] (CPA maps).
The pieces (Encoder3D, layers.EncoderStage, fusions, layers.DecoderStage) are
also usable one by one.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import layers

Dtype = layers.Dtype
ModuleDef = layers.ModuleDef


def slices_to_volume(x: jax.Array) -> jax.Array:
  """(B, H, W, D) slices-as-channels -> (B, D, H, W, 1) single-channel volume."""
  return jnp.transpose(x, (0, 3, 1, 2))[..., None]


class Encoder3D(nn.Module):
  """D-UNet's 3D stem: len(features) 3D levels, 2x2x2 pool between them.

  (B, D, H, W, C) -> tuple of (B, D / 2^l, H / 2^l, W / 2^l, features[l]),
  l = 0 .. len(features) - 1 (level l + 1 of the 2D encoder).
  """
  features: tuple[int, ...] = (32, 64, 128)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, ...]:
    outs = []
    for level, width in enumerate(self.features, start=1):
      x = layers.EncoderStage(
          width, pool=None if level == 1 else layers.max_pool_2x2x2,
          conv=layers.Conv3DBNReLU, dtype=self.dtype, name=f'down_{level}')(x, train=train)
      outs.append(x)
    return tuple(outs)


class Project3DTo2D(nn.Module):
  """3D feature -> 2D feature map of `features` channels (Keras D_* fusions' head).

    p = ReLU(W_2 *_{3x3} T(W_1 *_{1x1x1} x3d + b_1) + b_2)
  x3d (B, D, H, W, C3) -> W_1: 1 channel -> T: depth becomes channels
  (B, H, W, D) -> (B, H, W, features). No BN, as in the Keras code.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x3d: jax.Array) -> jax.Array:
    if x3d.ndim != 5:
      raise ValueError(f'Project3DTo2D expects (B, D, H, W, C), got {x3d.shape}')
    y = layers.Conv3D(1, (1, 1, 1), dtype=self.dtype, name='0_squeeze3d')(x3d)
    y = jnp.transpose(y[..., 0], (0, 2, 3, 1))
    y = nn.Conv(self.features, (3, 3), kernel_init=layers.he_normal, dtype=self.dtype,
                name='1_conv2d')(y)
    return nn.relu(y)


class SEAddFusion(nn.Module):
  """D-UNet's fusion (Keras D_SE_Add): y = SE(Project3DTo2D(x3d)) + SE(x2d).

  x3d (B, D, H, W, C3), x2d (B, H, W, features) -> (B, H, W, features).
  """
  features: int
  ratio: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x3d: jax.Array, x2d: jax.Array, *, train: bool) -> jax.Array:
    del train
    p = Project3DTo2D(self.features, dtype=self.dtype, name='0_project')(x3d)
    p = layers.SqueezeExcite(self.ratio, dtype=self.dtype, name='1_se_3d')(p)
    q = layers.SqueezeExcite(self.ratio, dtype=self.dtype, name='2_se_2d')(x2d)
    return p + q


class AddFusion(nn.Module):
  """Ablation (Keras D_Add): y = Project3DTo2D(x3d) + x2d."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x3d: jax.Array, x2d: jax.Array, *, train: bool) -> jax.Array:
    del train
    return Project3DTo2D(self.features, dtype=self.dtype, name='0_project')(x3d) + x2d


class ConcatFusion(nn.Module):
  """Ablation (Keras D_concat): y = ReLU(W *_{1x1} concat(Project3DTo2D(x3d), x2d) + b)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x3d: jax.Array, x2d: jax.Array, *, train: bool) -> jax.Array:
    del train
    p = Project3DTo2D(self.features, dtype=self.dtype, name='0_project')(x3d)
    y = jnp.concatenate([p, x2d.astype(p.dtype)], axis=-1)
    y = nn.Conv(self.features, (1, 1), kernel_init=layers.he_normal, dtype=self.dtype,
                name='1_conv')(y)
    return nn.relu(y)


class DUNet(nn.Module):
  """D-UNet; fields default to the paper, factories make it AGMR-Net's backbone.

  (B, H, W, D) -> {'logits': (B, H, W, num_classes) float32} (+ 'encoder_aux'
  when stage_attention is set). H, W multiples of 2^(len(features) - 1); D a
  multiple of 2^(len(features_3d) - 1). Parameter tree, in network order (also
  sorted order): 0_stem3d, 1_down_1, [1_down_l_attn], [1_down_l_fuse], ...,
  1_down_5, 2_up_1 (coarsest) .. 2_up_4, 3_head.

  Attributes:
    features: 2D widths per level, finest first.
    features_3d: 3D stem widths per level.
    fusion_levels: 2D levels (1-based) receiving the 3D feature of the same level;
      empty -> no 3D stem at all (a plain U-Net).
    num_classes: output channels.
    dropout_rate, dropout_levels: dropout after these 2D levels.
    fusion, upsample, stage_attention: factories (module docstring).
    dtype: compute dtype; params, BN and logits float32.
  """
  features: tuple[int, ...] = (32, 64, 128, 256, 512)
  features_3d: tuple[int, ...] = (32, 64, 128)
  fusion_levels: tuple[int, ...] = (2, 3)
  num_classes: int = 1
  dropout_rate: float = 0.3
  dropout_levels: tuple[int, ...] = (4, 5)
  fusion: ModuleDef = SEAddFusion
  upsample: ModuleDef = layers.UpsampleConv
  stage_attention: ModuleDef | None = None
  dtype: Dtype = jnp.float32

  def _check(self, x: jax.Array) -> None:
    who = type(self).__name__
    layers.check_divisible(x, 2 ** (len(self.features) - 1), who)
    bad = [l for l in self.fusion_levels
           if not 1 <= l <= min(len(self.features), len(self.features_3d))]
    if bad:
      raise ValueError(f'{who}: fusion_levels {bad} outside the 3D stem levels '
                       f'1..{len(self.features_3d)}')
    depth_factor = 2 ** (len(self.features_3d) - 1)
    if self.fusion_levels and x.shape[-1] % depth_factor:
      raise ValueError(f'{who}: the 3D stem pools the {x.shape[-1]} input slices '
                       f'{len(self.features_3d) - 1} times; need a multiple of {depth_factor}')

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    self._check(x)
    x = x.astype(self.dtype)
    feats_3d = ()
    if self.fusion_levels:
      feats_3d = Encoder3D(self.features_3d, dtype=self.dtype, name='0_stem3d')(
          slices_to_volume(x), train=train)
    skips, aux = [], []
    for level, width in enumerate(self.features, start=1):
      x = layers.EncoderStage(
          width, pool=None if level == 1 else layers.max_pool_2x2,
          dropout_rate=self.dropout_rate if level in self.dropout_levels else 0.0,
          dtype=self.dtype, name=f'1_down_{level}')(x, train=train)
      if self.stage_attention is not None:
        x, a = self.stage_attention(dtype=self.dtype, name=f'1_down_{level}_attn')(x, train=train)
        aux.append(a)
      if level in self.fusion_levels:
        x = self.fusion(features=width, dtype=self.dtype, name=f'1_down_{level}_fuse')(
            feats_3d[level - 1], x, train=train)
      skips.append(x)
    for i, level in enumerate(range(len(self.features) - 1, 0, -1), start=1):
      x = layers.DecoderStage(self.features[level - 1], upsample=self.upsample,
                              dtype=self.dtype, name=f'2_up_{i}')(x, skips[level - 1], train=train)
    out = {'logits': layers.Head(self.num_classes, name='3_head')(x)}
    if self.stage_attention is not None:
      out['encoder_aux'] = tuple(aux)
    return out
