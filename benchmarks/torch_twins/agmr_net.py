"""PyTorch twin of agmr_jax.models.agmr_net.AGMRNet: D-UNet + CPA + CFF + MDU, NCHW.

  CPA   w = sigmoid(f2(ReLU(f1(flatten(adaptive_avg_pool_GxG(mean_c F)))))) (B, G, G);
        Y = F * (1 + nearest_up(w)); returns (Y, logits). Float32 inside, as in Flax.
        torch's adaptive pooling and 'nearest' interpolation use exactly the patch
        bounds and row -> patch map of cpa.py (it was written to match them).
  FA    CBAM spatial attention: M = sigmoid(conv_7x7([mean_c; max_c])), Y = M * F.
  CFF   3D_t = ReLU(BN(conv3x3(T(conv1x1x1(x3d))))); g = [GAP(3D_t); GAP(2D)];
        w_2, w_3 = sigmoid(MLP(g)); out = 3D_t * w_3 + 2D * w_2 (or 1x1 conv of the concat).
  MDU   per kernel k: ReLU(BN(ConvT_k,s2(x))) -> dropout, concatenated (2x); stride-1 convs
        when not upsampling (the 'skip' / 'encoder' positions).
Children carry the Flax names ('1_down_l_attn', '0_mdu', '0_deconv3', '0_norm3', ...).
Outputs {'logits', 'cpa_logits' (B, 5, G, G) float32 with CPA}.
"""

from collections.abc import Sequence
import functools

import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_twins import dunet
from benchmarks.torch_twins import layers


class CPA(nn.Module):
  """Coarse-grained patch attention; children '0_f1', '1_f2'."""

  def __init__(self, channels: int, grid: int = 6, hidden: int | None = None,
               use_bias: bool = False):
    super().__init__()
    del channels  # CPA's MLP acts on the G x G grid, whatever the width.
    n = grid * grid
    self.grid = grid
    self.add_module('0_f1', nn.Linear(n, hidden or n // 2, bias=use_bias))
    self.add_module('1_f2', nn.Linear(hidden or n // 2, n, bias=use_bias))

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, g = x.shape[0], self.grid
    with torch.autocast(device_type=x.device.type, enabled=False):
      descriptors = F.adaptive_avg_pool2d(x.float().mean(dim=1, keepdim=True), g)
      z = F.relu(self._modules['0_f1'](descriptors.reshape(b, g * g)))
      logits = self._modules['1_f2'](z).reshape(b, g, g)
      attention = F.interpolate(torch.sigmoid(logits)[:, None], size=x.shape[2:],
                                mode='nearest')
    return x * (1.0 + attention).to(x.dtype), logits


class FineGrainedAttention(nn.Module):
  """CBAM spatial attention ('conv' 7x7, 2 -> 1), float32."""

  def __init__(self, channels: int, kernel_size: int = 7):
    super().__init__()
    del channels
    self.conv = layers.conv(2, 1, kernel_size)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(device_type=x.device.type, enabled=False):
      xf = x.float()
      pooled = torch.stack([xf.mean(dim=1), xf.amax(dim=1)], dim=1)
      m = torch.sigmoid(self.conv(pooled))[:, 0]
    return (xf * m[:, None]).to(x.dtype), m


class Project3DTo2DBN(nn.Module):
  """ReLU(BN(conv3x3(T(conv1x1x1(x3d))))): children '0_squeeze3d', '1_conv2d'."""

  def __init__(self, features: int, channels_3d: int, depth: int):
    super().__init__()
    self.add_module('0_squeeze3d', nn.Conv3d(channels_3d, 1, 1))
    self.add_module('1_conv2d', layers.ConvBNReLU(depth, features, 3))

  def forward(self, x3d: torch.Tensor) -> torch.Tensor:
    return self._modules['1_conv2d'](self._modules['0_squeeze3d'](x3d)[:, 0])


class CFF(nn.Module):
  """Cross-dimensional feature fusion (cff.CFF), DUNet twin's fusion contract."""

  def __init__(self, features: int, channels_3d: int, depth: int, ratio: int = 8,
               shared_hidden: bool = False, project_bn: bool = True, combine: str = 'add'):
    super().__init__()
    c, self.shared_hidden, self.combine = features, shared_hidden, combine
    project = Project3DTo2DBN if project_bn else dunet.Project3DTo2D
    self.add_module('0_project', project(c, channels_3d, depth))
    dense = functools.partial(nn.Linear, bias=False)
    if shared_hidden:
      self.add_module('1_f1', dense(2 * c, max(1, 2 * c // ratio)))
      hidden = max(1, 2 * c // ratio)
    else:
      self.add_module('1_f1_2d', dense(2 * c, max(1, c // ratio)))
      self.add_module('1_f1_3d', dense(2 * c, max(1, c // ratio)))
      hidden = max(1, c // ratio)
    self.add_module('2_f2_2d', dense(hidden, c))
    self.add_module('2_f2_3d', dense(hidden, c))
    if combine == 'concat':
      self.add_module('3_conv', nn.Conv2d(2 * c, c, 1))

  def forward(self, x3d: torch.Tensor, x2d: torch.Tensor) -> torch.Tensor:
    m = self._modules
    t = m['0_project'](x3d)
    g = torch.cat([t.float().mean(dim=(2, 3)), x2d.float().mean(dim=(2, 3))], dim=1)
    if self.shared_hidden:
      h2 = h3 = F.relu(m['1_f1'](g))
    else:
      h2, h3 = F.relu(m['1_f1_2d'](g)), F.relu(m['1_f1_3d'](g))
    w2 = torch.sigmoid(m['2_f2_2d'](h2))[:, :, None, None]
    w3 = torch.sigmoid(m['2_f2_3d'](h3))[:, :, None, None]
    a, b = t * w3.to(t.dtype), x2d * w2.to(x2d.dtype)
    if self.combine == 'add':
      return a + b
    return F.relu(m['3_conv'](torch.cat([a, b.to(a.dtype)], dim=1)))


class MDU(nn.Module):
  """Multi-scale (de)convolution: branches '{i}_deconv{k}' (or '{i}_conv{k}') + '{i}_norm{k}'."""

  def __init__(self, in_channels: int, kernels: Sequence[int] = (3, 5, 7, 9),
               features: int | None = None, dropout_rate: float = 0.1, upsample: bool = True):
    super().__init__()
    features = features or in_channels
    width = features // len(kernels)
    self.names = []
    for i, k in enumerate(kernels):
      if upsample:
        conv_name, conv = f'{i}_deconv{k}', layers.ConvTranspose2dSame(in_channels, width, k)
      else:
        conv_name, conv = f'{i}_conv{k}', layers.conv(in_channels, width, k)
      self.add_module(conv_name, conv)
      self.add_module(f'{i}_norm{k}', layers.batch_norm(width))
      self.names.append((conv_name, f'{i}_norm{k}'))
    self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
    self.out_channels = features

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    m = self._modules
    return torch.cat([self.dropout(F.relu(m[norm](m[conv](x)))) for conv, norm in self.names],
                     dim=1)


class MDUUpsample(nn.Module):
  """Decoder up path: '0_mdu' (C_in -> C_in, 2x), then '1_conv' 3x3 CBR to `features`."""

  def __init__(self, in_channels: int, features: int, kernels: Sequence[int] = (3, 5, 7, 9),
               dropout_rate: float = 0.1, conv: bool = True):
    super().__init__()
    self.add_module('0_mdu', MDU(in_channels, kernels, dropout_rate=dropout_rate))
    self.has_conv = conv
    if conv:
      self.add_module('1_conv', layers.ConvBNReLU(in_channels, features))
    self.out_channels = features if conv else in_channels

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self._modules['0_mdu'](x)
    return self._modules['1_conv'](y) if self.has_conv else y


class SkipMultiScale(nn.Module):
  """The stride-1 multi-scale block on a skip ('mdu'); the gating input is ignored."""

  def __init__(self, skip_channels: int, gating_channels: int,
               kernels: Sequence[int] = (3, 5, 7, 9), dropout_rate: float = 0.1):
    super().__init__()
    del gating_channels
    self.mdu = MDU(skip_channels, kernels, dropout_rate=dropout_rate, upsample=False)

  def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
    del gating
    return self.mdu(skip)


class AGMRNet(nn.Module):
  """AGMR-Net twin; children as in Flax: 0_stem3d, 1_down_l[_0ms|_attn|_fuse], 2_up_i, 3_head."""

  def __init__(self, in_channels: int, features: Sequence[int] = (32, 64, 128, 256, 512),
               features_3d: Sequence[int] = (32, 64, 128), fusion_levels: Sequence[int] = (2, 3),
               num_classes: int = 1, dropout_rate: float = 0.3,
               dropout_levels: Sequence[int] = (4, 5), attention: str = 'cpa', cpa_grid: int = 6,
               fusion: str = 'cff', cff_ratio: int = 8, cff_shared_hidden: bool = False,
               mdu_kernels: Sequence[int] = (3, 5, 7, 9), mdu_position: str = 'decoder',
               mdu_dropout: float = 0.1, mdu_conv: bool = True):
    super().__init__()
    self.levels, self.fusion_levels = len(features), tuple(fusion_levels)
    self.attention, self.mdu_position = attention, mdu_position
    kernels = tuple(mdu_kernels)
    if self.fusion_levels:
      self.add_module('0_stem3d', dunet.Encoder3D(features_3d))
    fuse = _fusion(fusion, cff_ratio, cff_shared_hidden)
    attend = {'cpa': functools.partial(CPA, grid=cpa_grid), 'fa': FineGrainedAttention,
              'none': None}[attention]
    width = in_channels
    for level, f in enumerate(features, start=1):
      self.add_module(f'1_down_{level}', layers.EncoderStage(
          width, f, pool=level > 1,
          dropout_rate=dropout_rate if level in dropout_levels else 0.0))
      if mdu_position == 'encoder' and level < self.levels:
        self.add_module(f'1_down_{level}_0ms', MDU(f, kernels, dropout_rate=mdu_dropout,
                                                   upsample=False))
      if attend is not None:
        self.add_module(f'1_down_{level}_attn', attend(f))
      if level in self.fusion_levels:
        depth = in_channels // 2 ** (level - 1)
        self.add_module(f'1_down_{level}_fuse', fuse(f, features_3d[level - 1], depth))
      width = f
    upsample, skip_gate = layers.UpsampleConv, None
    if mdu_position == 'decoder':
      upsample = functools.partial(MDUUpsample, kernels=kernels, dropout_rate=mdu_dropout,
                                   conv=mdu_conv)
    elif mdu_position == 'skip':
      skip_gate = functools.partial(SkipMultiScale, kernels=kernels, dropout_rate=mdu_dropout)
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      f = features[level - 1]
      self.add_module(f'2_up_{i}', layers.DecoderStage(width, f, f, upsample=upsample,
                                                       skip_gate=skip_gate))
      width = f
    self.add_module('3_head', layers.Head(width, num_classes))

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    m = self._modules
    feats_3d = m['0_stem3d'](x.unsqueeze(1)) if self.fusion_levels else ()
    skips, maps = [], []
    for level in range(1, self.levels + 1):
      x = m[f'1_down_{level}'](x)
      if f'1_down_{level}_0ms' in m:
        x = m[f'1_down_{level}_0ms'](x)
      if self.attention != 'none':
        x, a = m[f'1_down_{level}_attn'](x)
        maps.append(a)
      if level in self.fusion_levels:
        x = m[f'1_down_{level}_fuse'](feats_3d[level - 1], x)
      skips.append(x)
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      x = m[f'2_up_{i}'](x, skips[level - 1])
    out = {'logits': m['3_head'](x)}
    if self.attention == 'cpa':
      out['cpa_logits'] = torch.stack(maps, dim=1).float()
    return out


def _fusion(name: str, ratio: int, shared_hidden: bool):
  cff = functools.partial(CFF, ratio=ratio, shared_hidden=shared_hidden)
  return {'cff': cff, 'cff_concat': functools.partial(cff, combine='concat'),
          'se_add': dunet.SEAddFusion, 'add': dunet.AddFusion,
          'concat': dunet.ConcatFusion}[name]


def build(model, in_channels: int, *, image_size=None) -> AGMRNet:
  """Twin of a Flax `AGMRNet` (fields read from `model`, ablation switches included)."""
  del image_size  # no parameter depends on the input size.
  return AGMRNet(
      in_channels, tuple(model.features), tuple(model.features_3d), tuple(model.fusion_levels),
      model.num_classes, model.dropout_rate, tuple(model.dropout_levels), model.attention,
      model.cpa_grid, model.fusion, model.cff_ratio, model.cff_shared_hidden,
      tuple(model.mdu_kernels), model.mdu_position, model.mdu_dropout, model.mdu_conv)
