"""AGMR-Net (Du, Ma, Song): D-UNet + CPA + CFF + MDU, with every switch of the paper's ablations.

Input (B, 192, 192, 4): slices z-2, z-1, z, z+1 as channels (Table 2). On the D-UNet backbone
(dunet.py: 2D encoder 32..512, 3D stem 32/64/128 over the 4 slices, fusion at levels 2 and 3):

  encoder level l   x = EncoderStage_l(x)            two 3x3 conv-BN-ReLU [+ pool, dropout]
                    x, a_l = CPA(x)                  all 5 levels, a_l: (B, 6, 6) logits
                    x = CFF(x3d_l, x)                levels 2, 3
  decoder stage     u = MDU(x)                       (B, 2H, 2W, C_in), kernels 3/5/7/9
                    u = ReLU(BN(W_3x3 * u))          C_in -> f   (see "Parameters")
                    x = two 3x3 conv-BN-ReLU([skip; u])
  head              1x1 conv -> float32 logits

Outputs: {'logits': (B, H, W, num_classes), 'cpa_logits': (B, 5, 6, 6) float32} (the latter
only with attention='cpa'; sigmoid of it is the coarse attention map the loss supervises).

Ablation switches (configs/agmr_net.py names one variant per table row):
  attention     'cpa' | 'fa' (CBAM spatial attention, Table 6) | 'none'          Tables 5, 6
  fusion        'cff' | 'cff_concat' | 'se_add' (D-UNet) | 'add' | 'concat'      Tables 5, 7, 8
  cff_ratio     R of CFF: 8, or 32 (Table 8)
  mdu_kernels   (3, 5, 7, 9) or four equal sizes                                   Table 9
  mdu_position  'decoder' | 'skip' | 'encoder' | 'none' (D-UNet's up path)         Tables 5, 10
With 'skip' / 'encoder' the decoder keeps D-UNet's upsample + 2x2 conv, and the multi-scale
block (MDU's branches with stride 1, C -> C) sits on the skip connections of levels 1-4, or
in the encoder after levels 1-4 (so its output also feeds the next level).

Parameters at the defaults: 23,799,283 trainable values, Table 9's count for kernels {3,5,7,9}
exactly, and the other four kernel sets match too (tests/test_agmr_net.py); plus 10,048 BN
moving statistics (23,809,331 in Keras's count). `mdu_conv=False` (MDU straight into the
concat, no conv after it) gives 23,014,483, 784,800 short of Table 9: the post-MDU 3x3
conv-BN-ReLU is what closes the gap.

How the structure was pinned down, the breakdown and the ablation counts: docs/models.md#agmr-net
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from agmr_jax.models import dunet
from agmr_jax.models import layers
from agmr_jax.models.cff import CFF
from agmr_jax.models.cpa import CPA, FineGrainedAttention
from agmr_jax.models.mdu import MDU

Dtype = layers.Dtype
ModuleDef = layers.ModuleDef

ATTENTIONS = ('cpa', 'fa', 'none')
FUSIONS = ('cff', 'cff_concat', 'se_add', 'add', 'concat')
MDU_POSITIONS = ('decoder', 'skip', 'encoder', 'none')


class MDUUpsample(nn.Module):
  """Decoder up path: MDU (C_in -> C_in, 2x) then a 3x3 conv-BN-ReLU to `features`.

  DecoderStage's `upsample` contract: (B, H, W, C_in) -> (B, 2H, 2W, features), or
  (B, 2H, 2W, C_in) with conv=False.
  """
  features: int
  kernels: tuple[int, ...] = (3, 5, 7, 9)
  dropout_rate: float = 0.1
  conv: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = MDU(self.kernels, dropout_rate=self.dropout_rate, dtype=self.dtype, name='0_mdu')(
        x, train=train)
    if self.conv:
      y = layers.ConvBNReLU(self.features, dtype=self.dtype, name='1_conv')(y, train=train)
    return y


class SkipMultiScale(nn.Module):
  """DecoderStage's `skip_gate` contract: the multi-scale block (stride 1) on the skip."""
  kernels: tuple[int, ...] = (3, 5, 7, 9)
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, skip: jax.Array, gating: jax.Array, *, train: bool) -> jax.Array:
    del gating  # Not a gate: the block only looks at the skip itself.
    return MDU(self.kernels, dropout_rate=self.dropout_rate, upsample=False, dtype=self.dtype,
               name='mdu')(skip, train=train)


class AGMRNet(nn.Module):
  """AGMR-Net; fields default to the paper, the string fields select ablations.

  (B, H, W, D) -> dict (module docstring). H, W multiples of 2^(len(features) - 1); D a
  multiple of 2^(len(features_3d) - 1). Parameter tree in network order (= sorted order):
  0_stem3d, 1_down_1, [1_down_1_0ms], [1_down_1_attn], 1_down_2, ..., [1_down_l_fuse], ...,
  1_down_5, 2_up_1 (coarsest) .. 2_up_4, 3_head -- DUNet's names, so D-UNet and AGMR-Net
  parameter trees line up.

  Attributes:
    features, features_3d, fusion_levels, num_classes, dropout_rate, dropout_levels: as DUNet.
    attention: 'cpa' | 'fa' | 'none', after every 2D encoder level.
    cpa_grid: CPA's patches per side.
    fusion: 'cff' | 'cff_concat' | 'se_add' | 'add' | 'concat' at fusion_levels.
    cff_ratio: CFF's reduction rate R.
    cff_shared_hidden: CFF's MLP structure (cff.py).
    mdu_kernels: MDU branch kernel sizes (odd; len divides every width).
    mdu_position: 'decoder' | 'skip' | 'encoder' | 'none'.
    mdu_dropout: dropout after each MDU branch (the paper has one but gives no rate).
    mdu_conv: the 3x3 conv-BN-ReLU after the decoder MDU (module docstring).
    dtype: compute dtype; params, BN and logits float32.
  """
  features: tuple[int, ...] = (32, 64, 128, 256, 512)
  features_3d: tuple[int, ...] = (32, 64, 128)
  fusion_levels: tuple[int, ...] = (2, 3)
  num_classes: int = 1
  dropout_rate: float = 0.3
  dropout_levels: tuple[int, ...] = (4, 5)
  attention: str = 'cpa'
  cpa_grid: int = 6
  fusion: str = 'cff'
  cff_ratio: int = 8
  cff_shared_hidden: bool = False
  mdu_kernels: tuple[int, ...] = (3, 5, 7, 9)
  mdu_position: str = 'decoder'
  mdu_dropout: float = 0.1
  mdu_conv: bool = True
  dtype: Dtype = jnp.float32

  def _check(self, x: jax.Array) -> None:
    for field, allowed in (('attention', ATTENTIONS), ('fusion', FUSIONS),
                           ('mdu_position', MDU_POSITIONS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f'AGMRNet.{field} must be one of {allowed}, got {getattr(self, field)!r}')
    # The backbone's input checks (sizes, slice depth, fusion levels) read only fields that
    # AGMRNet shares with DUNet, and name type(self) in their messages.
    dunet.DUNet._check(self, x)

  def _fusion(self) -> ModuleDef:
    cff = functools.partial(CFF, ratio=self.cff_ratio, shared_hidden=self.cff_shared_hidden)
    return {'cff': cff, 'cff_concat': functools.partial(cff, combine='concat'),
            'se_add': dunet.SEAddFusion, 'add': dunet.AddFusion,
            'concat': dunet.ConcatFusion}[self.fusion]

  def _attention(self) -> ModuleDef | None:
    return {'cpa': functools.partial(CPA, grid=self.cpa_grid), 'fa': FineGrainedAttention,
            'none': None}[self.attention]

  def _decoder(self) -> tuple[ModuleDef, ModuleDef | None]:
    """(upsample, skip_gate) factories for DecoderStage."""
    if self.mdu_position == 'decoder':
      return functools.partial(MDUUpsample, kernels=tuple(self.mdu_kernels),
                               dropout_rate=self.mdu_dropout, conv=self.mdu_conv), None
    if self.mdu_position == 'skip':
      return layers.UpsampleConv, functools.partial(
          SkipMultiScale, kernels=tuple(self.mdu_kernels), dropout_rate=self.mdu_dropout)
    return layers.UpsampleConv, None

  def _encoder(self, x: jax.Array, feats_3d, *, train: bool):
    """2D encoder with attention, fusion and (mdu_position='encoder') multi-scale blocks."""
    attention, fusion = self._attention(), self._fusion()
    skips, maps = [], []
    for level, width in enumerate(self.features, start=1):
      x = layers.EncoderStage(
          width, pool=None if level == 1 else layers.max_pool_2x2,
          dropout_rate=self.dropout_rate if level in self.dropout_levels else 0.0,
          dtype=self.dtype, name=f'1_down_{level}')(x, train=train)
      if self.mdu_position == 'encoder' and level < len(self.features):
        x = MDU(tuple(self.mdu_kernels), dropout_rate=self.mdu_dropout, upsample=False,
                dtype=self.dtype, name=f'1_down_{level}_0ms')(x, train=train)
      if attention is not None:
        x, a = attention(dtype=self.dtype, name=f'1_down_{level}_attn')(x, train=train)
        maps.append(a)
      if level in self.fusion_levels:
        x = fusion(features=width, dtype=self.dtype, name=f'1_down_{level}_fuse')(
            feats_3d[level - 1], x, train=train)
      skips.append(x)
    return x, skips, maps

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    self._check(x)
    x = x.astype(self.dtype)
    feats_3d = ()
    if self.fusion_levels:
      feats_3d = dunet.Encoder3D(self.features_3d, dtype=self.dtype, name='0_stem3d')(
          dunet.slices_to_volume(x), train=train)
    x, skips, maps = self._encoder(x, feats_3d, train=train)
    upsample, skip_gate = self._decoder()
    for i, level in enumerate(range(len(self.features) - 1, 0, -1), start=1):
      x = layers.DecoderStage(self.features[level - 1], upsample=upsample, skip_gate=skip_gate,
                              dtype=self.dtype, name=f'2_up_{i}')(x, skips[level - 1], train=train)
    out = {'logits': layers.Head(self.num_classes, name='3_head')(x)}
    if self.attention == 'cpa':
      out['cpa_logits'] = jnp.stack(maps, axis=1).astype(jnp.float32)
    return out
