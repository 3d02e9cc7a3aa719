"""PyTorch twin of agmr_jax.models.clci_net.CLCINet (Yang et al., MICCAI 2019), NCHW.

Input (B, 1, 224, 176). Encoder 32..512 (two 3x3 conv-BN-ReLU per level), a CLF
block closing levels 1-4 (max-pool + strided 3x3 branches from every earlier
level, 1x1 fusion to 4x the next width), dropout 0.5 on the bottleneck; CLF-ASPP
(4 cross-level + 1x1 + atrous 2/4/6 + image pooling, 9 x 256 -> 1x1 to 1024,
dropout 0.5); decoder levels u = CBR_2x2(up2(x)), s = CBR_1x1(skip),
h = ConvLSTM_3x3([u, s]) last hidden state, two 3x3 CBR; 1x1 float32 head.
The ConvLSTM (flax nn.ConvLSTMCell) has gates i, g, f, o along the channel axis,
f = sigmoid(. + 1), biases on both the input ('ih') and hidden ('hh') convs,
zero initial state, cell state in float32.
"""

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_twins import layers


class CrossLevelFusion(nn.Module):
  """levels (F_1..F_k) -> CBR_1x1([D_k, ..., D_1, maxpool(F_k)]); children 'down_j', 'fuse'."""

  def __init__(self, level_channels: Sequence[int], features: int,
               branch_features: int | None = None):
    super().__init__()
    k = len(level_channels)
    width = branch_features or level_channels[-1]
    for j, c in enumerate(level_channels, start=1):
      self.add_module(f'down_{j}', layers.ConvBNReLU(c, width, 3, stride=2 ** (k - j + 1)))
    self.add_module('fuse', layers.ConvBNReLU(k * width + level_channels[-1], features, 1))

  def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
    branches = [self._modules[f'down_{j}'](f) for j, f in enumerate(levels, start=1)]
    y = torch.cat(branches[::-1] + [F.max_pool2d(levels[-1], 2)], dim=1)
    return self._modules['fuse'](y)


class ImagePooling(nn.Module):
  """Global mean -> CBR_1x1 ('conv') -> broadcast to h x w."""

  def __init__(self, in_channels: int, features: int):
    super().__init__()
    self.conv = layers.ConvBNReLU(in_channels, features, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pooled = x.float().mean(dim=(2, 3), keepdim=True).to(x.dtype)
    return self.conv(pooled).expand(-1, -1, *x.shape[2:])


class CLFASPP(nn.Module):
  """Children '0_clf_j', '1_conv1x1', '2_atrous_r', '3_image_pool', '4_project'."""

  def __init__(self, in_channels: int, earlier_channels: Sequence[int], features: int = 256,
               out_features: int = 1024, rates: Sequence[int] = (2, 4, 6),
               cross_level: bool = True, dropout_rate: float = 0.5):
    super().__init__()
    self.cross_level, self.rates = cross_level, tuple(rates)
    n = len(earlier_channels) if cross_level else 0
    for j, c in enumerate(earlier_channels[:n], start=1):
      self.add_module(f'0_clf_{j}', layers.ConvBNReLU(c, features, 3,
                                                      stride=2 ** (len(earlier_channels) + 1 - j)))
    self.n_clf = n
    self.add_module('1_conv1x1', layers.ConvBNReLU(in_channels, features, 1))
    for r in self.rates:
      self.add_module(f'2_atrous_{r}', layers.ConvBNReLU(in_channels, features, 3, dilation=r))
    self.add_module('3_image_pool', ImagePooling(in_channels, features))
    branches = n + 2 + len(self.rates)
    self.add_module('4_project', layers.ConvBNReLU(branches * features, out_features, 1))
    self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()

  def forward(self, x: torch.Tensor, earlier: Sequence[torch.Tensor]) -> torch.Tensor:
    m = self._modules
    branches = [m[f'0_clf_{j}'](f) for j, f in enumerate(earlier[:self.n_clf], start=1)]
    branches.append(m['1_conv1x1'](x))
    branches += [m[f'2_atrous_{r}'](x) for r in self.rates]
    branches.append(m['3_image_pool'](x))
    return self.dropout(m['4_project'](torch.cat(branches, dim=1)))


class ConvLSTMCell(nn.Module):
  """flax nn.ConvLSTMCell: gates = ih(x) + hh(h), split i, g, f, o."""

  def __init__(self, in_channels: int, features: int, kernel_size: int = 3):
    super().__init__()
    self.ih = layers.conv(in_channels, 4 * features, kernel_size)
    self.hh = layers.conv(features, 4 * features, kernel_size)

  def forward(self, x, c, h):
    i, g, f, o = torch.chunk(self.ih(x) + self.hh(h), 4, dim=1)
    c = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * torch.tanh(g)
    return c, torch.sigmoid(o) * torch.tanh(c)


class ContextInference(nn.Module):
  """Last hidden state of the ConvLSTM over [decoder, skip] from a zero float32 state."""

  def __init__(self, features: int, kernel_size: int = 3):
    super().__init__()
    self.cell = ConvLSTMCell(features, features, kernel_size)

  def forward(self, decoder: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    # (1, f, 1, 1), as conv_lstm.ContextInference: broadcasts to the same step-1 gates without
    # a full-size hidden conv of zeros (and its zero weight gradient).
    c = hidden = decoder.new_zeros((1, self.cell.hh.in_channels, 1, 1), dtype=torch.float32)
    for x in (decoder, skip):
      c, hidden = self.cell(x, c, hidden)
    return hidden.to(decoder.dtype)


class ContextDecoderStage(nn.Module):
  """Children '0_up', '1_skip', '2_lstm', '3_block' (clci_net.ContextDecoderStage)."""

  def __init__(self, in_channels: int, skip_channels: int, features: int,
               context_inference: bool = True):
    super().__init__()
    self.context_inference = context_inference
    self.add_module('0_up', layers.ConvBNReLU(in_channels, features, 2))
    if context_inference:
      self.add_module('1_skip', layers.ConvBNReLU(skip_channels, features, 1))
      self.add_module('2_lstm', ContextInference(features))
    block_in = features if context_inference else skip_channels + features
    self.add_module('3_block', layers.DoubleConv(block_in, features))

  def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    m = self._modules
    up = m['0_up'](layers.upsample_2x(x))
    if self.context_inference:
      y = m['2_lstm'](up, m['1_skip'](skip))
    else:
      y = torch.cat([skip, up.to(skip.dtype)], dim=1)
    return m['3_block'](y)


class CLCINet(nn.Module):
  """CLCI-Net twin; children '0_down_l', '0_down_l_clf', '1_aspp', '2_up_i', '3_head'."""

  def __init__(self, in_channels: int, features: Sequence[int] = (32, 64, 128, 256, 512),
               num_classes: int = 1, fusion_expansion: int = 4, aspp_features: int = 256,
               aspp_out_features: int = 1024, aspp_rates: Sequence[int] = (2, 4, 6),
               dropout_rate: float = 0.5, use_clf: bool = True, use_aspp: bool = True,
               use_inference: bool = True):
    super().__init__()
    self.levels, self.use_clf, self.use_aspp = len(features), use_clf, use_aspp
    width = in_channels
    for level, f in enumerate(features, start=1):
      if level > 1 and use_clf:
        self.add_module(f'0_down_{level - 1}_clf', CrossLevelFusion(
            features[:level - 1], fusion_expansion * f))
        width = fusion_expansion * f
      self.add_module(f'0_down_{level}', layers.DoubleConv(width, f))
      width = f
    self.bottleneck_dropout = nn.Dropout(dropout_rate)
    if use_aspp:
      self.add_module('1_aspp', CLFASPP(width, features[:-1], aspp_features, aspp_out_features,
                                        aspp_rates, use_clf, dropout_rate))
      width = aspp_out_features
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      f = features[level - 1]
      self.add_module(f'2_up_{i}', ContextDecoderStage(width, f, f, use_inference))
      width = f
    self.add_module('3_head', layers.Head(width, num_classes))

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    m, levels = self._modules, []
    for level in range(1, self.levels + 1):
      if level > 1:
        x = m[f'0_down_{level - 1}_clf'](levels) if self.use_clf else F.max_pool2d(x, 2)
      x = m[f'0_down_{level}'](x)
      levels.append(x)
    x = levels[-1] = self.bottleneck_dropout(levels[-1])
    if self.use_aspp:
      x = m['1_aspp'](x, levels[:-1])
    for i, level in enumerate(range(self.levels - 1, 0, -1), start=1):
      x = m[f'2_up_{i}'](x, levels[level - 1])
    return {'logits': m['3_head'](x)}


def build(model, in_channels: int, *, image_size=None) -> CLCINet:
  """Twin of a Flax `CLCINet` (fields read from `model`)."""
  del image_size  # no parameter depends on the input size.
  return CLCINet(in_channels, tuple(model.features), model.num_classes, model.fusion_expansion,
                 model.aspp_features, model.aspp_out_features, tuple(model.aspp_rates),
                 model.dropout_rate, model.use_clf, model.use_aspp, model.use_inference)
