"""Flax variables -> a PyTorch twin's state_dict, and the twin's BN statistics back.

A twin mirrors its Flax module tree by name (torch_twins.layers), so the Flax
subtree of a torch module is found at the module's `named_modules()` path:
`1_down_2.block.conv_1.conv` <-> params['1_down_2']['block']['conv_1']['conv'].
Each leaf module converts its own Flax leaves:

  Conv{1,2,3}d        kernel (*K, C_in, C_out) -> weight (C_out, C_in, *K); bias
  ConvTranspose{2,3}d kernel (*K, C_in, C_out) -> weight (C_in, C_out, *K), each
                      spatial axis flipped: Flax's ConvTranspose (transpose_kernel
                      =False) is a dilated-input correlation with the kernel as
                      stored, torch's is the adjoint of a correlation
  Linear              kernel (in, out) -> weight (out, in); bias
  BatchNorm{1,2,3}d   scale, bias -> weight, bias; batch_stats mean, var ->
                      running_mean, running_var
  anything else       its own `flax_state(params, stats) -> {name: array}`

The load is strict both ways: every torch parameter/buffer (num_batches_tracked
aside) must be filled and every Flax leaf used, else a ValueError lists the
paths, so a twin that drifts from its Flax model fails loudly.
"""

from collections.abc import Iterator
from collections.abc import Mapping
import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

Path = tuple[str, ...]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, np.ndarray]:
  """Nested dict of arrays -> {path tuple: numpy array}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = np.asarray(value)
  return out


def _leaves_at(flat: dict[Path, np.ndarray], path: Path) -> dict[str, np.ndarray]:
  """The direct (non-dict) leaves of the Flax module at `path`, by name."""
  return {p[-1]: v for p, v in flat.items() if len(p) == len(path) + 1 and p[:-1] == path}


def _conv_weight(kernel: np.ndarray) -> np.ndarray:
  n = kernel.ndim
  return np.transpose(kernel, (n - 1, n - 2, *range(n - 2)))


def _conv_transpose_weight(kernel: np.ndarray) -> np.ndarray:
  n = kernel.ndim
  flipped = np.flip(kernel, axis=tuple(range(n - 2)))
  return np.transpose(flipped, (n - 2, n - 1, *range(n - 2)))


def _with_bias(weight: np.ndarray, params: dict) -> dict[str, np.ndarray]:
  out = {'weight': weight}
  if 'bias' in params:
    out['bias'] = params['bias']
  return out


def convert_module(module: nn.Module, params: dict, stats: dict) -> dict[str, np.ndarray]:
  """Torch parameter/buffer name -> value for one module from its Flax leaves."""
  if hasattr(module, 'flax_state'):
    return module.flax_state(params, stats)
  if isinstance(module, _CONVS):
    return _with_bias(_conv_weight(params['kernel']), params)
  if isinstance(module, _CONV_TRANSPOSES):
    return _with_bias(_conv_transpose_weight(params['kernel']), params)
  if isinstance(module, nn.Linear):
    return _with_bias(params['kernel'].T, params)
  if isinstance(module, _BATCH_NORMS):
    return {'weight': params['scale'], 'bias': params['bias'],
            'running_mean': stats['mean'], 'running_var': stats['var']}
  raise NotImplementedError(
      f'{type(module).__name__} holds parameters but has no Flax conversion; '
      'give it a flax_state(params, stats) method')


def _own_entries(module: nn.Module) -> dict[str, torch.Tensor]:
  entries = dict(module.named_parameters(recurse=False))
  entries.update((k, v) for k, v in module.named_buffers(recurse=False)
                 if k != 'num_batches_tracked' and v is not None)
  return entries


def flax_to_torch_state(twin: nn.Module, variables: Mapping[str, Any]) -> dict[str, torch.Tensor]:
  """The twin's state_dict (float32 CPU tensors) holding Flax `variables`.

  Raises:
    ValueError: torch entries left unfilled, Flax leaves left unused, or a shape
      mismatch; the message names the paths.
  """
  params = flatten(variables.get('params', {}))
  stats = flatten(variables.get('batch_stats', {}))
  used: set[tuple[str, Path]] = set()
  state, problems = {}, []
  for name, module in twin.named_modules():
    entries = _own_entries(module)
    if not entries:
      continue
    path = tuple(name.split('.')) if name else ()
    own_params, own_stats = _leaves_at(params, path), _leaves_at(stats, path)
    try:
      converted = convert_module(module, own_params, own_stats)
    except KeyError as e:
      problems.append(f'{name}: Flax leaf {e} missing')
      continue
    used.update(('params', path + (k,)) for k in own_params)
    used.update(('batch_stats', path + (k,)) for k in own_stats)
    for key, tensor in entries.items():
      if key not in converted:
        problems.append(f'{name}.{key}: not filled from Flax')
        continue
      value = np.ascontiguousarray(converted[key], dtype=np.float32)
      if tuple(value.shape) != tuple(tensor.shape):
        problems.append(
            f'{name}.{key}: Flax gives {value.shape}, torch wants {tuple(tensor.shape)}')
      # torch.tensor copies: Flax leaves may be read-only buffers.
      state[f'{name}.{key}' if name else key] = torch.tensor(value)
  unused = [f'{c}/{"/".join(p)}' for c, flat in (('params', params), ('batch_stats', stats))
            for p in flat if (c, p) not in used]
  # Structural problems first: a shape mismatch is often their consequence.
  problems = [f'{u}: Flax leaf has no torch counterpart' for u in unused] + problems
  if problems:
    raise ValueError(f'{type(twin).__name__}: Flax -> torch transfer failed '
                     f'({len(problems)} problems):\n  ' + '\n  '.join(problems[:20]))
  return state


def load_flax_variables(twin: nn.Module, variables: Mapping[str, Any]) -> nn.Module:
  """Copies Flax params/batch_stats into `twin` in place (device and memory format kept)."""
  state = flax_to_torch_state(twin, variables)
  missing, unexpected = twin.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith('num_batches_tracked')]
  if missing or unexpected:  # flax_to_torch_state checks this already; belt and braces.
    raise ValueError(f'load_state_dict: missing {missing}, unexpected {unexpected}')
  return twin


def batch_stats_of(twin: nn.Module) -> dict[Path, np.ndarray]:
  """The twin's BN running statistics as flat Flax batch_stats: {(*path, 'mean'|'var'): array}."""
  out = {}
  for name, module in twin.named_modules():
    if isinstance(module, _BATCH_NORMS):
      path = tuple(name.split('.'))
      # Copies: .numpy() of a CPU tensor shares its memory, and BN updates in place.
      out[path + ('mean',)] = module.running_mean.detach().float().cpu().numpy().copy()
      out[path + ('var',)] = module.running_var.detach().float().cpu().numpy().copy()
  return out


@contextlib.contextmanager
def bn_sample_counts(twin: nn.Module) -> Iterator[dict[Path, int]]:
  """Records, per BN module path, the values per channel n of its last forward."""
  counts: dict[Path, int] = {}
  handles = []
  for name, module in twin.named_modules():
    if isinstance(module, _BATCH_NORMS):
      path = tuple(name.split('.'))
      def hook(_, inputs, path=path):
        counts[path] = inputs[0].numel() // inputs[0].shape[1]
      handles.append(module.register_forward_pre_hook(hook))
  try:
    yield counts
  finally:
    for h in handles:
      h.remove()


def torch_running_var_to_flax(torch_var: np.ndarray, var_before: np.ndarray, n: int,
                              momentum: float = 0.99) -> np.ndarray:
  """Flax's running variance after one update, from torch's.

  torch: v' = m v + (1 - m) s2 n / (n - 1); Flax: v' = m v + (1 - m) s2, with s2
  the biased batch variance. So Flax's v' = m v + (torch v' - m v) (n - 1) / n.
  """
  return momentum * var_before + (torch_var - momentum * var_before) * (n - 1) / n


def nhwc_to_torch(x: np.ndarray, *, channels_last: bool = False,
                  device: str | torch.device = 'cpu') -> torch.Tensor:
  """(B, H, W, C) numpy -> (B, C, H, W) tensor, NCHW or channels_last in memory."""
  t = torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  return t.contiguous(memory_format=fmt)


def torch_to_nhwc(t: torch.Tensor) -> np.ndarray:
  """(B, C, H, W) tensor -> (B, H, W, C) float32 numpy."""
  return np.array(t.detach().float().cpu().permute(0, 2, 3, 1))  # a copy, not a view.
