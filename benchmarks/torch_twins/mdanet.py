"""PyTorch twin of agmr_jax.models.mdanet.MDANet (Zhang et al. 2024), NCHW.

Input (B, g_1 + g_2, H, W), split into two modality groups along the channels.
  stage 1   per group, own weights: F_i^1 = block(x_i), returned as 'group_features'.
  encoder   shared weights, levels 2..L: 2x2 max-pool, block; both groups as one batch of 2B
            (BatchNorm statistics over both, as in Flax).
  skips     F_D = F_m1 - F_m2 (GroupSkip), refined in the decoder stage by
            DASC: W = sigmoid(t1(t2(F_D) + up(t3(F_de)))), F = F_D + W F_D.
  bottleneck  GCFB(channel) then GCFB(space) on the concatenated graph of both groups,
            G' = ReLU(((I - A) G) W); output F_1' - F_2'.
  decoder   2x2 stride-2 transposed conv, concat [DASC(skip), up], two 3x3 conv-BN-ReLU.
  head      1x1 conv, float32 logits.
block = MSC: chains of 1, 2, 3 3x3 conv-BN-ReLU at widths C/2, C/4, C/4, concatenated.
Outputs {'logits': (B, K, H, W), 'group_features': ((B, c_1, H, W), (B, c_1, H, W))}.

GCFB(space)'s position embedding (N x E) and node adjacency (2N x 2N) have N = hw / p^2
bottleneck patches, so, as the Flax model's are fixed at init from the input, the twin is
built for one input size (`build(..., image_size=)`).
"""

from collections.abc import Callable
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from agmr_jax.models import layers as flax_layers
from agmr_jax.models import mdanet as flax_mdanet
from agmr_jax.models.msc import split_widths
from benchmarks.torch_twins import layers

Pair = tuple[torch.Tensor, torch.Tensor]


def stack_pair(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
  """Two groups' (B, ...) -> (2B, ...): shared layers run (and batch-normalise) once."""
  return torch.cat([f1, f2], dim=0)


def split_pair(x: torch.Tensor) -> Pair:
  b = x.shape[0] // 2
  return x[:b], x[b:]


def pair_to_graph(x: torch.Tensor) -> torch.Tensor:
  """Per-group graphs (2B, N, E) -> concatenated graph (B, 2N, E), group 1's nodes first."""
  return torch.cat(split_pair(x), dim=1)


def graph_to_pair(g: torch.Tensor) -> torch.Tensor:
  n = g.shape[1] // 2
  return stack_pair(g[:, :n], g[:, n:])


class MSC(nn.Module):
  """concat(chain_1(x), chain_2(x), chain_3(x)); children 'chain{k}_conv{l}' (msc.MSC)."""

  def __init__(self, in_channels: int, features: int,
               fractions: Sequence[float] = (0.5, 0.25, 0.25)):
    super().__init__()
    self.depths = []
    for depth, width in enumerate(split_widths(features, tuple(fractions)), start=1):
      c = in_channels
      for layer in range(1, depth + 1):
        self.add_module(f'chain{depth}_conv{layer}', layers.ConvBNReLU(c, width))
        c = width
      self.depths.append(depth)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    outs = []
    for depth in self.depths:
      y = x
      for layer in range(1, depth + 1):
        y = self._modules[f'chain{depth}_conv{layer}'](y)
      outs.append(y)
    return torch.cat(outs, dim=1)


class GroupSkip(nn.Module):
  """F_m1 - F_m2 ('subtract'), F_m1 + F_m2 ('add') or 1x1 conv 'conv' of the concat."""

  def __init__(self, channels: int, mode: str = 'subtract'):
    super().__init__()
    if mode not in ('subtract', 'add', 'concat'):
      raise ValueError(f'GroupSkip mode must be subtract, add or concat, got {mode!r}')
    self.mode = mode
    if mode == 'concat':
      self.conv = nn.Conv2d(2 * channels, channels, 1)

  def forward(self, f_m1: torch.Tensor, f_m2: torch.Tensor) -> torch.Tensor:
    if self.mode == 'subtract':
      return f_m1 - f_m2
    if self.mode == 'add':
      return f_m1 + f_m2
    return self.conv(torch.cat([f_m1, f_m2], dim=1))


class DASC(nn.Module):
  """Eqs. (2)-(3); children '0_theta2', '1_theta3', '2_theta1' (dasc.DASC).

  DecoderStage skip-gate contract: (skip_channels, gating_channels) -> module(f_d, f_de).
  theta_3 runs at the decoder feature's size before the nearest upsampling, as in Flax.
  """

  def __init__(self, skip_channels: int, gating_channels: int, inter_features: int | None = None):
    super().__init__()
    inter = inter_features or max(1, skip_channels // 2)
    self.add_module('0_theta2', nn.Conv2d(skip_channels, inter, 1))
    self.add_module('1_theta3', nn.Conv2d(gating_channels, inter, 1))
    self.add_module('2_theta1', nn.Conv2d(inter, 1, 1))

  def forward(self, f_d: torch.Tensor, f_de: torch.Tensor) -> torch.Tensor:
    m = self._modules
    guide = layers.upsample_2x(m['1_theta3'](f_de), 'nearest')
    attention = torch.sigmoid(m['2_theta1'](m['0_theta2'](f_d) + guide).float())
    f_d32 = f_d.float()
    return (f_d32 + attention * f_d32).to(f_d.dtype)


class GraphConv(nn.Module):
  """G' = ReLU(((I - A) G) W) on (B, M, E); A = '0_node_conv' weight, W its feature twin."""

  def __init__(self, nodes: int, states: int):
    super().__init__()
    self.add_module('0_node_conv', nn.Linear(nodes, nodes, bias=False))
    self.add_module('1_feature_conv', nn.Linear(states, states, bias=False))

  def forward(self, g: torch.Tensor) -> torch.Tensor:
    ag = self._modules['0_node_conv'](g.transpose(1, 2)).transpose(1, 2)
    return F.relu(self._modules['1_feature_conv'](g - ag))


class ChannelGCFB(nn.Module):
  """GCFB(channel), GloRe-style; children '0_theta', '1_phi', '2_gcn', '3_extend', '4_bn'."""

  def __init__(self, channels: int, nodes: int | None = None, states: int | None = None):
    super().__init__()
    n, e = nodes or max(1, channels // 4), states or max(1, channels // 2)
    self.add_module('0_theta', nn.Conv2d(channels, n, 1))
    self.add_module('1_phi', nn.Conv2d(channels, e, 1))
    self.add_module('2_gcn', GraphConv(2 * n, e))
    self.add_module('3_extend', nn.Conv2d(e, channels, 1, bias=False))
    self.add_module('4_bn', layers.batch_norm(channels))

  def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> Pair:
    m = self._modules
    x = stack_pair(f1, f2)
    b2, _, h, w = x.shape
    proj = m['0_theta'](x).flatten(2)  # (2B, N, hw)
    state = m['1_phi'](x).flatten(2)  # (2B, E, hw)
    graphs = torch.einsum('bnp,bep->bne', proj, state)  # Eq. (4), per group.
    updated = graph_to_pair(m['2_gcn'](pair_to_graph(graphs)))
    back = torch.einsum('bnp,bne->bep', proj, updated).reshape(b2, -1, h, w)  # Eq. (5).
    return split_pair(x + m['4_bn'](m['3_extend'](back)))


class SpaceGCFB(nn.Module):
  """GCFB(space): p x p patches as nodes + 'position' (N, p^2 C); child 'gcn'."""

  def __init__(self, channels: int, num_patches: int, patch_size: int = 1):
    super().__init__()
    self.patch_size = patch_size
    self.position = nn.Parameter(torch.zeros(num_patches, patch_size ** 2 * channels))
    self.gcn = GraphConv(2 * num_patches, patch_size ** 2 * channels)

  def flax_state(self, params: dict, stats: dict) -> dict[str, np.ndarray]:
    del stats
    return {'position': params['position']}

  def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> Pair:
    x = stack_pair(f1, f2)
    b2, c, h, w = x.shape
    p = self.patch_size
    gh, gw = h // p, w // p
    if gh * gw != self.position.shape[0]:
      raise ValueError(f'SpaceGCFB twin built for {self.position.shape[0]} patches, '
                       f'got a {h}x{w} feature (patch size {p})')
    # Token features ordered (patch row, patch column, channel), as the Flax reshape.
    tokens = x.reshape(b2, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b2, gh * gw, -1)
    tokens = tokens + self.position.to(tokens.dtype)
    updated = graph_to_pair(self.gcn(pair_to_graph(tokens)))
    y = updated.reshape(b2, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b2, c, h, w)
    return split_pair(x + y)


class GCFBFusion(nn.Module):
  """GCFB(channel) '0_channel' -> GCFB(space) '1_space' -> F_1' - F_2'."""

  def __init__(self, channels: int, num_patches: int, patch_size: int = 1):
    super().__init__()
    self.add_module('0_channel', ChannelGCFB(channels))
    self.add_module('1_space', SpaceGCFB(channels, num_patches, patch_size))

  def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    f1, f2 = self._modules['0_channel'](f1, f2)
    f1, f2 = self._modules['1_space'](f1, f2)
    return f1 - f2


class SubtractFusion(nn.Module):
  """No fusion block (Table 5's baseline): F_1 - F_2."""

  def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    return f1 - f2


class UpsampleTransposed(nn.Module):
  """2x2 stride-2 transposed conv with bias, 'conv' (mdanet.UpsampleTransposed)."""

  def __init__(self, in_channels: int, features: int):
    super().__init__()
    self.conv = nn.ConvTranspose2d(in_channels, features, 2, stride=2)
    self.out_channels = features

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(x)


class MDANet(nn.Module):
  """Children as the Flax tree: '0_stage1_group{1,2}', '1_down_l', '2_skip_l' (parameters
  only for skip='concat'), '3_bottleneck', '4_up_i' (each with its DASC as '1_gate'), '5_head'.

  `bottleneck(channels) -> module(f1, f2)` builds the fusion (GCFBFusion, SubtractFusion).
  """

  def __init__(self, groups: Sequence[int] = (2, 2),
               features: Sequence[int] = (64, 128, 256, 512, 1024), num_classes: int = 1,
               msc: bool = True, skip: str = 'subtract',
               bottleneck: Callable[[int], nn.Module] = SubtractFusion,
               upsample: Callable[..., nn.Module] = UpsampleTransposed):
    super().__init__()
    self.groups, self.levels = tuple(groups), len(features)
    block = MSC if msc else layers.DoubleConv
    self.add_module('0_stage1_group1', block(groups[0], features[0]))
    self.add_module('0_stage1_group2', block(groups[1], features[0]))
    for level in range(2, self.levels + 1):
      self.add_module(f'1_down_{level}', block(features[level - 2], features[level - 1]))
    for level in range(1, self.levels):
      self.add_module(f'2_skip_{level}', GroupSkip(features[level - 1], skip))
    self.add_module('3_bottleneck', bottleneck(features[-1]))
    width = features[-1]
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      f = features[level - 1]
      self.add_module(f'4_up_{i}', layers.DecoderStage(width, f, f, upsample=upsample,
                                                       skip_gate=DASC))
      width = f
    self.add_module('5_head', layers.Head(width, num_classes))

  def forward(self, x: torch.Tensor) -> dict:
    m, g1 = self._modules, self.groups[0]
    f1 = m['0_stage1_group1'](x[:, :g1])
    f2 = m['0_stage1_group2'](x[:, g1:])
    skips = [m['2_skip_1'](f1, f2)]
    h = stack_pair(f1, f2)
    for level in range(2, self.levels + 1):
      h = m[f'1_down_{level}'](F.max_pool2d(h, 2))
      if level < self.levels:
        skips.append(m[f'2_skip_{level}'](*split_pair(h)))
    y = m['3_bottleneck'](*split_pair(h))
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      y = m[f'4_up_{i}'](y, skips[level - 1])
    return {'logits': m['5_head'](y), 'group_features': (f1, f2)}


UPSAMPLE_TWINS = {flax_mdanet.UpsampleTransposed: UpsampleTransposed,
                  flax_layers.UpsampleConv: layers.UpsampleConv}


def _bottleneck(model, image_size: Sequence[int] | None) -> Callable[[int], nn.Module]:
  if model.fusion == 'none':
    return lambda channels: SubtractFusion()
  if model.fusion != 'gcfb':
    raise NotImplementedError(f'mdanet twin: fusion={model.fusion!r} has no twin '
                              "(only the paper's 'gcfb' and 'none')")
  if image_size is None:
    raise ValueError("mdanet twin: GCFB(space)'s parameters depend on the input size; "
                     'pass image_size=(H, W)')
  factor = 2 ** (len(model.features) - 1) * model.patch_size
  h, w = image_size
  if h % factor or w % factor:
    raise ValueError(f'mdanet twin: input {h}x{w} is not a multiple of {factor}')
  patches = (h // factor) * (w // factor)
  return lambda channels: GCFBFusion(channels, patches, model.patch_size)


def build(model, in_channels: int, *, image_size: Sequence[int] | None = None) -> MDANet:
  """Twin of a Flax `MDANet` for inputs of `image_size` (H, W) (fields read from `model`)."""
  if sum(model.groups) != in_channels:
    raise ValueError(f'mdanet twin: groups {model.groups} do not sum to {in_channels} channels')
  return MDANet(tuple(model.groups), tuple(model.features), model.num_classes, model.msc,
                model.skip, _bottleneck(model, image_size),
                layers.twin_factory(model.upsample, UPSAMPLE_TWINS, 'upsample'))
