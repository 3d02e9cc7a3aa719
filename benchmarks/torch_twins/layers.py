"""PyTorch twins of agmr_jax.models.layers: the shared blocks, NCHW.

Each block mirrors its Flax counterpart module for module, with the same child
names ('conv', 'bn', 'conv_1', '0_up', ...), so a twin's `named_modules()` paths
are the Flax parameter paths and `transfer.load_flax_variables` needs no
per-network table. What differs from Flax, and why it is still the same function:

* Layout: NCHW (NCDHW for 3D) instead of NHWC; `to_channels_last` switches the
  memory format without changing any shape.
* BatchNorm: native `nn.BatchNorm{2,3}d(eps=1e-3, momentum=0.01)`. Torch's
  momentum weights the new batch, Flax's the old average, so 0.01 == 0.99. Torch
  updates running_var with the unbiased batch variance (x n/(n-1)), Flax with the
  biased one; `transfer.torch_running_var_to_flax` converts (the normalisation
  itself uses the biased variance in both).
* Pooling: `F.max_pool2d` / `max_pool3d` give the same values as Flax's
  reshape + max (only the gradient at exact ties differs).
* 'SAME' padding: `SameConv2d` applies Flax's rule for any kernel/stride/
  dilation; asymmetric cases (the 2x2 up conv, stride 2) pad the extra
  row/column after, as TF/Flax do.
* Mixed precision: under `torch.autocast` the convs run in bf16 and BatchNorm
  normalises in float32 internally, as the Flax blocks do; the head runs with
  autocast off on float32 input, as `layers.Head` returns float32 logits.

Factory contracts (the torch side of the Flax factory fields):
  upsample(in_channels, features) -> module(x) -> (B, out_channels, 2H, 2W),
      exposing `out_channels`;
  skip_gate(skip_channels, gating_channels) -> module(skip, g) -> skip's shape.
`twin_factory` maps a Flax factory (class or functools.partial) to its twin.
"""

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import functools

import torch
from torch import nn
import torch.nn.functional as F

BN_EPSILON = 1e-3
BN_MOMENTUM = 0.01  # torch convention: weight of the new batch (Flax 0.99).


def batch_norm(features: int, dims: int = 2) -> nn.Module:
  """BatchNorm with the project's momentum/epsilon, 2D or 3D."""
  cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
  return cls(features, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class SameConv2d(nn.Conv2d):
  """Conv2d with TF/Flax 'SAME' padding for any kernel, stride and dilation.

  Per spatial axis of size n: out = ceil(n / s), total padding
  max((out - 1) s + (k - 1) d + 1 - n, 0), the smaller half before (Flax's rule).
  Symmetric padding goes to the convolution itself; only an asymmetric one (even
  kernels, stride 2 on even sizes) costs an explicit `F.pad`.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
               dilation: int = 1, bias: bool = True):
    super().__init__(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation,
                     bias=bias)

  def _same_pads(self, size: Sequence[int]) -> list[tuple[int, int]]:
    pads = []
    for n, k, s, d in zip(size, self.kernel_size, self.stride, self.dilation):
      total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
      pads.append((total // 2, total - total // 2))
    return pads

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    (top, bottom), (left, right) = self._same_pads(x.shape[-2:])
    if top == bottom and left == right:
      return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride,
                    0, self.dilation)


def conv(in_channels: int, features: int, kernel_size: int, dims: int = 2, bias: bool = True,
         stride: int = 1, dilation: int = 1) -> nn.Module:
  """'SAME' conv: SameConv2d in 2D; in 3D (stride 1, odd kernels only) a padded Conv3d."""
  if dims == 2:
    return SameConv2d(in_channels, features, kernel_size, stride, dilation, bias)
  if kernel_size % 2 == 0 or stride != 1 or dilation != 1:
    raise NotImplementedError('3D twins only need stride-1 odd kernels')
  return nn.Conv3d(in_channels, features, kernel_size, padding=kernel_size // 2, bias=bias)


def to_channels_last(module: nn.Module) -> nn.Module:
  """channels_last for 4D tensors and channels_last_3d for 5D ones, in place.

  `module.to(memory_format=torch.channels_last)` refuses 5D tensors (D-UNet's 3D
  branch), hence this walk.
  """
  formats = {4: torch.channels_last, 5: torch.channels_last_3d}
  with torch.no_grad():
    for p in module.parameters():
      if p.dim() in formats:
        p.data = p.data.contiguous(memory_format=formats[p.dim()])
  return module


class ConvBNReLU(nn.Module):
  """y = act(BN(W * x + b)); (B, C_in, *S) -> (B, features, *S / stride). layers.ConvBNReLU.

  `dilation` also makes it the twin of clf_aspp.AtrousConvBNReLU (same children).
  """

  def __init__(self, in_channels: int, features: int, kernel_size: int = 3, dims: int = 2,
               use_bias: bool = True, activation: bool = True, stride: int = 1,
               dilation: int = 1):
    super().__init__()
    self.conv = conv(in_channels, features, kernel_size, dims, use_bias, stride, dilation)
    self.bn = batch_norm(features, dims)
    self.activation = activation

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.bn(self.conv(x))
    return F.relu(x) if self.activation else x


class DoubleConv(nn.Module):
  """Two ConvBNReLU at the same width ('conv_1', 'conv_2'): the U-Net level block."""

  def __init__(self, in_channels: int, features: int, dims: int = 2):
    super().__init__()
    self.conv_1 = ConvBNReLU(in_channels, features, dims=dims)
    self.conv_2 = ConvBNReLU(features, features, dims=dims)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv_2(self.conv_1(x))


class EncoderStage(nn.Module):
  """[2x max-pool] -> DoubleConv ('block') -> [dropout]: (B, C, *S) -> (B, f, *S / 2)."""

  def __init__(self, in_channels: int, features: int, pool: bool, dropout_rate: float = 0.0,
               dims: int = 2):
    super().__init__()
    self.pool = pool
    self.dims = dims
    self.block = DoubleConv(in_channels, features, dims)
    self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pool:
      x = F.max_pool2d(x, 2) if self.dims == 2 else F.max_pool3d(x, 2)
    return self.dropout(self.block(x))


class UpsampleConv(nn.Module):
  """x2 upsample, then a `kernel_size` 'SAME' conv + ReLU: (B, C, H, W) -> (B, f, 2H, 2W)."""

  def __init__(self, in_channels: int, features: int, kernel_size: int | Sequence[int] = (2, 2),
               method: str = 'nearest'):
    super().__init__()
    if method not in ('nearest', 'bilinear'):
      raise ValueError(f"UpsampleConv.method must be 'nearest' or 'bilinear', got {method!r}")
    self.method = method
    k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
    self.conv = SameConv2d(in_channels, features, k)
    self.out_channels = features

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.relu(self.conv(upsample_2x(x, self.method)))


def upsample_2x(x: torch.Tensor, method: str = 'nearest') -> torch.Tensor:
  """layers.upsample_nearest_2x / upsample_bilinear_2x (half-pixel centres)."""
  if method == 'nearest':
    return F.interpolate(x, scale_factor=2, mode='nearest')
  return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)


class ConvTranspose2dSame(nn.ConvTranspose2d):
  """Twin of `flax.linen.ConvTranspose(f, (k, k), strides=2, padding='SAME')`, k odd.

  Flax pads the dilated input by (k + 1) / 2 before and (k - 1) / 2 after;
  torch's padding p pads k - 1 - p on both sides (+ output_padding after). With
  p = (k - 3) / 2 the front matches and the output is 2H + 1: the last row and
  column are cropped. (B, C_in, H, W) -> (B, f, 2H, 2W). The weight conversion
  (kernel flip) is transfer.py's ConvTranspose rule.
  """

  def __init__(self, in_channels: int, features: int, kernel_size: int):
    if kernel_size % 2 == 0 or kernel_size < 3:
      raise ValueError(f'ConvTranspose2dSame needs an odd kernel >= 3, got {kernel_size}')
    super().__init__(in_channels, features, kernel_size, stride=2,
                     padding=(kernel_size - 3) // 2)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return super().forward(x)[..., :2 * h, :2 * w]


class DecoderStage(nn.Module):
  """y = DoubleConv(concat([gate(skip, x), upsample(x)])): children '0_up', '1_gate', '2_block'."""

  def __init__(self, in_channels: int, skip_channels: int, features: int,
               upsample: Callable[..., nn.Module] = UpsampleConv,
               skip_gate: Callable[..., nn.Module] | None = None):
    super().__init__()
    up = upsample(in_channels, features)
    self.add_module('0_up', up)
    if skip_gate is not None:  # registered only under its Flax name (no attribute alias).
      self.add_module('1_gate', skip_gate(skip_channels, in_channels))
    self.add_module('2_block', DoubleConv(skip_channels + up.out_channels, features))

  def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    up = self._modules['0_up'](x)
    gate = self._modules.get('1_gate')
    if gate is not None:
      skip = gate(skip, x)
    return self._modules['2_block'](torch.cat([skip, up.to(skip.dtype)], dim=1))


class SqueezeExcite(nn.Module):
  """y = x * sigmoid(W2 relu(W1 GAP(x))), bias-free Linear layers '0_reduce', '1_expand'."""

  def __init__(self, channels: int, ratio: int = 16):
    super().__init__()
    self.add_module('0_reduce', nn.Linear(channels, max(1, channels // ratio), bias=False))
    self.add_module('1_expand', nn.Linear(max(1, channels // ratio), channels, bias=False))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    s = x.float().mean(dim=tuple(range(2, x.dim())))
    s = torch.sigmoid(self._modules['1_expand'](F.relu(self._modules['0_reduce'](s))))
    return x * s.reshape(s.shape + (1,) * (x.dim() - 2)).to(x.dtype)


class Head(nn.Module):
  """1x1 conv to `num_classes` logits, float32 with autocast off (layers.Head)."""

  def __init__(self, in_channels: int, num_classes: int = 1):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, num_classes, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=x.device.type, enabled=False):
      return self.conv(x.float())


def unwrap_factory(factory) -> tuple[type, dict]:
  """(class, keyword arguments) of a Flax factory: a class or nested functools.partial."""
  kwargs = {}
  while isinstance(factory, functools.partial):
    if factory.args:
      raise NotImplementedError(f'positional arguments in factory {factory!r}')
    kwargs = {**factory.keywords, **kwargs}
    factory = factory.func
  kwargs.pop('dtype', None)  # compute dtype: the torch side uses autocast instead.
  return factory, kwargs


def twin_factory(flax_factory, table: Mapping[type, Callable[..., nn.Module]], field: str):
  """The torch factory for `flax_factory`, keyword options carried over.

  `table` maps Flax Module classes to torch constructors whose extra keyword
  arguments have the Flax field names (e.g. UpsampleConv's `method`).

  Raises:
    NotImplementedError: the Flax factory has no twin (names the field).
  """
  if flax_factory is None:
    return None
  cls, kwargs = unwrap_factory(flax_factory)
  if cls not in table:
    known = ', '.join(sorted(c.__name__ for c in table))
    raise NotImplementedError(f'no PyTorch twin for {field}={cls.__name__} (known: {known})')
  return functools.partial(table[cls], **kwargs)
