"""Per-slice numpy augmentations for the Grain pipeline.

An element is a dict {'image': (H, W, C) float32, 'mask': (H, W) uint8, ...}; other keys pass
through untouched. Every op is a small class with `__call__(element, rng) -> element`: pure numpy,
deterministic given the `np.random.Generator`, never writing into its input. `Augment` chains ops,
each applied with its own probability; it is itself such a callable (so it goes straight into
`grain.MapDataset.random_map`) and returns float32 / uint8 C-contiguous arrays. Single ops may
return views (flips, quarter turns): a chain of them then costs one copy at the end.

Geometric ops resample the image with order 1 over all channels at once and the mask either by
nearest neighbour (labels, the contour class 2 included, are kept exactly) or, with
mask_mode='linear', by resampling the lesion (mask > 0) with order 1, thresholding at 0.5 and
recomputing the 1-pixel contour class when the input had one (a non-empty contour-mode mask always
contains 2s, so the mask itself tells). Rotation, scaling and translation are one `Affine` op: one
resample per slice. Outside the slice the image reads `cval` (0 = background after
normalisation) and the mask 0.

The resampling lives in sampler.py, the ops in transforms.py; this module chains them.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from input_pipeline.augment.sampler import MASK_MODES, contiguous_image, resample
from input_pipeline.augment.transforms import (Affine, Brightness, Contrast, Elastic, FlipH, FlipV,
                                               Rot90)

__all__ = ['AUGMENT_ON', 'AUGMENT_PRESETS', 'MASK_MODES', 'Affine', 'Augment', 'Brightness',
           'Contrast', 'Elastic', 'FlipH', 'FlipV', 'Rot90', 'host_augment', 'resample']

# Order of the ops built by from_config, whatever order the config lists them in.
_ORDER = ('flip_h', 'flip_v', 'rot90', 'affine', 'elastic', 'brightness', 'contrast')
# Config key -> (its argument, default, Affine's argument, Affine's probability argument).
_AFFINE_PARTS = {'rotate': ('degrees', 15.0, 'degrees', 'p_rotate'),
                 'scale': ('range', (0.8, 1.2), 'scale', 'p_scale'),
                 'translate': ('fraction', 0.1, 'translate', 'p_translate')}
_BUILDERS = {'flip_h': FlipH, 'flip_v': FlipV, 'rot90': Rot90, 'elastic': Elastic,
             'brightness': Brightness, 'contrast': Contrast}


class Augment:
  """Applies (probability, op) pairs in sequence; deterministic given rng.

  A probability of 1 calls the op without consuming a random number; 0 skips it. The image is
  cast to float32 first (records may store float16); outputs are C-contiguous.
  """

  def __init__(self, ops: Sequence[tuple[float, object]]):
    self.ops = tuple((float(p), op) for p, op in ops)

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    element = {**element, 'image': np.asarray(element['image'], np.float32)}
    for p, op in self.ops:
      if p >= 1.0 or (p > 0.0 and rng.random() < p):
        element = op(element, rng)
    element['image'] = contiguous_image(element['image'])
    if 'mask' in element:
      element['mask'] = np.ascontiguousarray(element['mask'])
    return element

  @classmethod
  def from_config(cls, config: Mapping | Sequence) -> 'Augment':
    """Builds the chain from plain data (a mapping or (key, value) pairs), e.g.

      {'flip_h': 0.5, 'rotate': {'p': 0.5, 'degrees': 90}, 'scale': {'p': 0.5,
       'range': (0.8, 1.2)}, 'mask_mode': 'nearest'}

    Keys: flip_h, flip_v, rot90 {choices}, rotate {degrees: 15}, scale {range: (0.8, 1.2)},
    translate {fraction: 0.1}, elastic {alpha, sigma}, brightness {delta}, contrast {range}
    (defaults as in each op). Each value is a
    probability or a mapping with 'p' (default 1) and the op's arguments. 'mask_mode' and 'cval'
    apply to every resampling op. rotate/scale/translate fuse into one Affine resample whose
    components keep their own probabilities. Ops run in the order of _ORDER.
    """
    items = dict(config.items() if isinstance(config, Mapping) else config)
    resampling = {'mask_mode': items.pop('mask_mode', 'nearest'),
                  'cval': float(items.pop('cval', 0.0))}
    specs = {}
    for key, value in items.items():
      if key not in _BUILDERS and key not in _AFFINE_PARTS:
        raise ValueError(f'unknown augmentation {key!r}; known: '
                         f'{sorted([*_BUILDERS, *_AFFINE_PARTS])}')
      spec = dict(value) if isinstance(value, Mapping) else {'p': float(value)}
      specs[key] = (float(spec.pop('p', 1.0)), spec)
    affine = {}
    for key, (arg, default, affine_arg, p_arg) in _AFFINE_PARTS.items():
      if key in specs:
        p, spec = specs[key]
        if set(spec) - {arg}:
          raise ValueError(f'{key} takes p and {arg}, got {sorted(spec)}')
        affine[affine_arg], affine[p_arg] = spec.get(arg, default), p
    ops = []
    for key in _ORDER:
      if key == 'affine' and affine:
        ops.append((1.0, Affine(**affine, **resampling)))
      elif key in specs and key in _BUILDERS:
        p, spec = specs[key]
        extra = resampling if key == 'elastic' else {}
        ops.append((p, _BUILDERS[key](**spec, **extra)))
    return cls(ops)


AUGMENT_PRESETS: dict[str, dict] = {
    # AGMR-Net, D-UNet and CLCI-Net state no augmentation.
    'none': {},
    # The CPU demos (configs ...:demo): 12 training subjects are few, and a short run on them
    # otherwise learns where their lesions are; mirror images and small rotations/scalings are
    # still brains.
    'demo': {'flip_h': 0.5, 'rotate': {'p': 0.5, 'degrees': 10.0},
             'scale': {'p': 0.5, 'range': (0.9, 1.1)}},
    # MDANet (paper 002): random flips, rotation in [-90, 90] degrees, scaling 0.8-1.2.
    'mdanet': {'flip_h': 0.5, 'flip_v': 0.5, 'rotate': {'p': 0.5, 'degrees': 90.0},
               'scale': {'p': 0.5, 'range': (0.8, 1.2)}},
    # The same reading "+-90" as exact quarter turns (square slices only).
    'mdanet_rot90': {'flip_h': 0.5, 'flip_v': 0.5, 'rot90': {'p': 0.5, 'choices': (1, 3)},
                     'scale': {'p': 0.5, 'range': (0.8, 1.2)}},
    # Thesis (paper 003, sec. 5.2): brightness/contrast, h/v flips, rotation +-7 degrees, elastic;
    # its grid and optical distortions are not reproduced.
    'thesis': {'flip_h': 0.5, 'flip_v': 0.5, 'rotate': {'p': 0.5, 'degrees': 7.0},
               'elastic': {'p': 0.25, 'alpha': 3.0, 'sigma': 12.0},
               'brightness': {'p': 0.5, 'delta': 0.1}, 'contrast': {'p': 0.5, 'range': (0.9, 1.1)}},
}

# Where the random transforms run (config.data.augment_on): 'device' = inside the jitted train
# step (input_pipeline.augment.device, the default), 'host' = per slice in the Grain workers.
AUGMENT_ON = ('device', 'host')


def host_augment(preset: str, augment_on: str = 'host') -> Augment | None:
  """The host chain of a preset, or None when it is empty or runs on the device."""
  if augment_on not in AUGMENT_ON:
    raise ValueError(f'augment_on must be one of {AUGMENT_ON}, got {augment_on!r}')
  augment = Augment.from_config(AUGMENT_PRESETS[preset])
  return augment if augment.ops and augment_on == 'host' else None
