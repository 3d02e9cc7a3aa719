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

Speed (benchmarks/augment_speed.py): pixels move as single void items to keep numpy's inner loops
long, and the sampler reuses per-thread scratch buffers: slice-sized temporaries sit above glibc's
mmap threshold, and their page faults, not arithmetic, dominated the time.
"""

import functools
import math
import threading
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from input_pipeline.recipes import lesion_contour, resize_linear

MASK_MODES = ('nearest', 'linear')


def _as_pixels(image: np.ndarray) -> np.ndarray:
  """(H, W, C) float32 -> (H, W) view whose items are whole pixels (no copy if C is contiguous)."""
  if image.dtype != np.float32 or image.strides[-1] != 4:
    image = np.ascontiguousarray(image, np.float32)
  return image.view(np.dtype((np.void, 4 * image.shape[-1])))[..., 0]


def _contiguous_image(image: np.ndarray) -> np.ndarray:
  if image.flags.c_contiguous and image.dtype == np.float32:
    return image
  return np.ascontiguousarray(_as_pixels(image)).view(np.float32).reshape(image.shape)


@functools.lru_cache(maxsize=16)
def _base_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """Row and column coordinates of every output pixel, flattened, float32."""
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                           indexing='ij')
  rows, cols = rows.reshape(-1), cols.reshape(-1)
  rows.flags.writeable = cols.flags.writeable = False
  return rows, cols


class _Sampler:
  """Per-thread scratch buffers for resampling (H, W, C) slices at arbitrary source positions."""

  def __init__(self, h: int, w: int, ch: int):
    n, pixel = h * w, np.dtype((np.void, 4 * ch))
    self.h, self.w, self.ch = h, w, ch
    self.pad = np.zeros((h + 2, w + 2, ch), np.float32)  # 1-pixel border holds cval
    self.pad_pixels = self.pad.view(pixel)[..., 0]
    self.corners = np.empty((4, n, ch), np.float32)
    self.corner_pixels = self.corners.view(pixel)[..., 0]
    self.r, self.c, self.fr, self.fc = (np.empty(n, np.float32) for _ in range(4))
    self.wr, self.wc = np.empty((n, ch), np.float32), np.empty((n, ch), np.float32)
    self.idx, self.idx_k = np.empty(n, np.int32), np.empty(n, np.int32)

  def set_coords(self, r: np.ndarray | None = None, c: np.ndarray | None = None, matrix=None):
    """Source (row, col) of every output pixel: given as (H*W,) arrays, or as a 2x3 affine
    matrix [[m00, m01, m02], [m10, m11, m12]] applied to the output (row, col, 1)."""
    if matrix is None:
      np.copyto(self.r, r)
      np.copyto(self.c, c)
    else:
      rows, cols = _base_grid(self.h, self.w)
      for out, (a, b, e) in ((self.r, matrix[0]), (self.c, matrix[1])):
        np.multiply(rows, np.float32(a), out=out)
        np.multiply(cols, np.float32(b), out=self.fr)
        out += self.fr
        out += np.float32(e)
    # Into the padded frame; clipping into the border makes every outside position read it.
    np.clip(self.r, -1.0, self.h, out=self.r)
    self.r += 1.0
    np.clip(self.c, -1.0, self.w, out=self.c)
    self.c += 1.0

  def _index(self, fr: np.ndarray, fc: np.ndarray):
    np.multiply(fr, self.w + 2, out=fr)
    np.add(fr, fc, out=fr)
    np.copyto(self.idx, fr, casting='unsafe')  # exact: integers below 2**24

  def bilinear(self, image: np.ndarray, cval: float) -> np.ndarray:
    """Order-1 sample of an (H, W, C) image -> new (H, W, C) float32."""
    h, w, v = self.h, self.w, self.corners
    self.pad_pixels[1:-1, 1:-1] = _as_pixels(image)
    self.pad[0], self.pad[-1], self.pad[:, 0], self.pad[:, -1] = cval, cval, cval, cval
    np.floor(self.r, out=self.fr)
    np.minimum(self.fr, h, out=self.fr)  # r0 <= h keeps r0 + 1 inside the padding
    np.floor(self.c, out=self.fc)
    np.minimum(self.fc, w, out=self.fc)
    np.subtract(self.c, self.fc, out=self.wc[:, 0])
    self._index(self.fr, self.fc)
    np.floor(self.r, out=self.fr)
    np.minimum(self.fr, h, out=self.fr)
    np.subtract(self.r, self.fr, out=self.wr[:, 0])
    for k, offset in enumerate((0, 1, w + 2, w + 3)):
      np.add(self.idx, offset, out=self.idx_k)
      self.pad_pixels.reshape(-1).take(self.idx_k, out=self.corner_pixels[k], mode='clip')
    # Weights spread over channels column by column: broadcasting (N, 1) against (N, C) runs
    # numpy's inner loop over only C values and is several times slower.
    for j in range(1, self.ch):
      self.wr[:, j] = self.wr[:, 0]
      self.wc[:, j] = self.wc[:, 0]
    v[1] -= v[0]
    v[1] *= self.wc
    v[0] += v[1]
    v[3] -= v[2]
    v[3] *= self.wc
    v[2] += v[3]
    v[2] -= v[0]
    v[2] *= self.wr
    out = np.empty((h, w, self.ch), np.float32)
    np.add(v[0], v[2], out=out.reshape(-1, self.ch))
    return out

  def nearest(self, mask: np.ndarray) -> np.ndarray:
    """Nearest-neighbour sample of an (H, W) label map (0 outside) -> new (H, W)."""
    np.add(self.r, 0.5, out=self.fr)
    np.floor(self.fr, out=self.fr)
    np.add(self.c, 0.5, out=self.fc)
    np.floor(self.fc, out=self.fc)
    self._index(self.fr, self.fc)
    padded = np.zeros((self.h + 2, self.w + 2), mask.dtype)
    padded[1:-1, 1:-1] = mask
    return padded.reshape(-1).take(self.idx).reshape(self.h, self.w)


_THREAD = threading.local()


def _sampler(h: int, w: int, ch: int) -> _Sampler:
  """This thread's sampler for the shape (Grain may run transforms in several threads)."""
  cache = _THREAD.__dict__.setdefault('samplers', {})
  if (h, w, ch) not in cache:
    cache[(h, w, ch)] = _Sampler(h, w, ch)
  return cache[(h, w, ch)]


def resample(element: dict, r: np.ndarray | None = None, c: np.ndarray | None = None, *,
             matrix=None, mask_mode: str = 'nearest', cval: float = 0.0) -> dict:
  """Element with image and mask sampled at source positions of every output pixel.

  Positions are (H*W,) row-major arrays r, c or a 2x3 `matrix` (see _Sampler.set_coords).
  """
  h, w, ch = element['image'].shape
  sampler = _sampler(h, w, ch)
  sampler.set_coords(r, c, matrix)
  out = {**element, 'image': sampler.bilinear(element['image'], cval)}
  if 'mask' in element:
    mask = np.asarray(element['mask'])
    if mask_mode == 'nearest':
      out['mask'] = sampler.nearest(mask)
    else:
      one = _sampler(h, w, 1)
      np.copyto(one.r, sampler.r)
      np.copyto(one.c, sampler.c)
      lesion = one.bilinear((mask > 0).astype(np.float32)[..., None], 0.0)[..., 0] >= 0.5
      new = lesion.astype(mask.dtype)
      if (mask == 2).any():
        new += lesion_contour(lesion).astype(mask.dtype)
      out['mask'] = new
  return out


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
    mask_mode: 'nearest' or 'linear' (see module docstring).
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
    rows, cols = _base_grid(h, w)
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
    element['image'] = _contiguous_image(element['image'])
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
