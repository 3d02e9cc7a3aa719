"""The augmentation ops: flips, quarter turns, affine and elastic warps, brightness, contrast.

Each is a small class with `__call__(element, rng) -> element` (see input_pipeline.augment).
"""

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from input_pipeline.augment.sampler import MASK_MODES, base_grid, resample
from input_pipeline.recipes import resize_linear


def _check_mask_mode(mask_mode: str):
  if mask_mode not in MASK_MODES:
    raise ValueError(f'mask_mode must be one of {MASK_MODES}, got {mask_mode!r}')


class FlipH:
  """Mirror left-right (reverses the W axis). Returns views."""

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    del rng
    return {**element, 'image': element['image'][:, ::-1], 'mask': element['mask'][:, ::-1]}


class FlipV:
  """Mirror top-bottom (reverses the H axis). Returns views."""

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    del rng
    return {**element, 'image': element['image'][::-1], 'mask': element['mask'][::-1]}


class Rot90:
  """Exact rotation by k quarter turns (np.rot90 sense, counter-clockwise), k drawn from choices.

  Square slices only (a quarter turn would change a non-square slice's shape). Returns views.
  """

  def __init__(self, choices: Sequence[int] = (1, 3)):
    self.choices = tuple(int(k) for k in choices)

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    image = element['image']
    if image.shape[0] != image.shape[1]:
      raise ValueError(f'Rot90 needs square slices, got {image.shape[:2]}')
    k = self.choices[rng.integers(len(self.choices))]
    return {**element, 'image': np.rot90(image, k, axes=(0, 1)),
            'mask': np.rot90(element['mask'], k, axes=(0, 1))}


class Affine:
  """Rotation, scaling and translation about the slice centre as ONE resample.

  Each component is drawn independently with its own probability; when none fires the element is
  returned unchanged. Positive angles turn the content counter-clockwise, like Rot90.

  Args:
    degrees: rotation angle drawn uniformly from [-degrees, degrees]; 0 disables.
    scale: (lo, hi) zoom factor drawn uniformly (> 1 magnifies); None disables.
    translate: shift drawn uniformly from [-translate, translate] * (H, W); 0 disables.
    p_rotate, p_scale, p_translate: probability of each component.
    mask_mode: 'nearest' or 'linear' (see input_pipeline.augment).
    cval: image value outside the slice.
  """

  def __init__(self, degrees: float = 0.0, scale: Sequence[float] | None = None,
               translate: float = 0.0, p_rotate: float = 1.0, p_scale: float = 1.0,
               p_translate: float = 1.0, mask_mode: str = 'nearest', cval: float = 0.0):
    _check_mask_mode(mask_mode)
    self.degrees, self.translate = float(degrees), float(translate)
    self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
    self.p_rotate, self.p_scale, self.p_translate = p_rotate, p_scale, p_translate
    self.mask_mode, self.cval = mask_mode, cval

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    h, w = element['image'].shape[:2]
    fires = lambda on, p: on and p > 0 and (p >= 1 or rng.random() < p)
    angle, zoom, shift, fired = 0.0, 1.0, (0.0, 0.0), False
    if fires(self.degrees > 0, self.p_rotate):
      angle, fired = math.radians(rng.uniform(-self.degrees, self.degrees)), True
    if fires(self.scale is not None, self.p_scale):
      zoom, fired = rng.uniform(*self.scale), True
    if fires(self.translate > 0, self.p_translate):
      shift, fired = tuple(rng.uniform(-self.translate, self.translate, 2) * (h, w)), True
    return self.apply(element, angle, zoom, shift) if fired else element

  def apply(self, element: dict, angle: float, zoom: float = 1.0,
            shift: Sequence[float] = (0.0, 0.0)) -> dict:
    """Deterministic transform: angle in radians, zoom factor, shift (rows, cols) in pixels."""
    h, w = element['image'].shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    # Inverse map: source = centre + R(-angle) / zoom @ (output - centre - shift).
    oy, ox = cy + shift[0], cx + shift[1]
    matrix = ((cos, sin, cy - cos * oy - sin * ox), (-sin, cos, cx + sin * oy - cos * ox))
    return resample(element, matrix=matrix, mask_mode=self.mask_mode, cval=self.cval)


class Elastic:
  """Elastic deformation by a smooth random displacement field.

  White noise on a coarse grid (spacing about sigma / 4) is Gaussian-smoothed, resized linearly
  to the slice and scaled so that its RMS displacement is `alpha` pixels per axis.

  Args:
    alpha: RMS displacement in pixels.
    sigma: smoothness (Gaussian sigma of the field) in pixels.
  """

  def __init__(self, alpha: float = 4.0, sigma: float = 12.0, mask_mode: str = 'nearest',
               cval: float = 0.0):
    _check_mask_mode(mask_mode)
    self.alpha, self.sigma, self.mask_mode, self.cval = alpha, sigma, mask_mode, cval

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    h, w = element['image'].shape[:2]
    step = max(1, int(self.sigma // 4))
    gh, gw = -(-h // step) + 1, -(-w // step) + 1
    noise = rng.standard_normal((2, gh, gw)).astype(np.float32)
    field = ndimage.gaussian_filter(noise, (0, self.sigma / step, self.sigma / step), mode='wrap')
    field = resize_linear(field, (h, w))
    field *= self.alpha / (field.std(axis=(1, 2), keepdims=True) + 1e-6)
    rows, cols = base_grid(h, w)
    return resample(element, rows + field[0].reshape(-1), cols + field[1].reshape(-1),
                    mask_mode=self.mask_mode, cval=self.cval)


class Brightness:
  """Adds one value drawn from U(-delta, delta) to the whole image (mask untouched)."""

  def __init__(self, delta: float = 0.1):
    self.delta = delta

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    return {**element, 'image': element['image'] + np.float32(rng.uniform(-self.delta, self.delta))}


class Contrast:
  """Multiplies the image by one factor drawn from U(lo, hi); a zero background stays zero."""

  def __init__(self, range: Sequence[float] = (0.9, 1.1)):  # pylint: disable=redefined-builtin
    self.range = (float(range[0]), float(range[1]))

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    return {**element, 'image': element['image'] * np.float32(rng.uniform(*self.range))}
