"""Per-paper preprocessing recipes: a (C, X, Y, Z) volume -> a stack of 2D/2.5D slices, and back.

A `Recipe` turns one case into `(Z, H, W, C * len(offsets))` float32 slices and `(Z, H, W)` uint8
masks, plus a `SliceGeometry` that `Recipe.inverse` uses to put per-slice predictions back into the
original voxel grid. Pure numpy; everything is vectorised over the whole stack.

Order of operations in `forward`: per-volume, per-modality intensity normalisation -> axial slices
(`vol[:, :, z].T`, docs/conventions.md) -> centre crop / zero pad -> linear resize -> neighbour
offsets (2.5D) -> contour class on the final grid.

Resizing is separable order-1 interpolation with half-pixel centres and clamped edges
(`resize_linear`), done as two-tap gathers over the whole stack. Forward and inverse share the
same sampling rule, the identity recipe is exact, and a 189-slice ATLAS volume takes about 0.3 s.
"""

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

NORMALIZATIONS = ('zscore', 'minmax', 'none')
GEOMETRY_LENGTH = 9  # X, Y, Z, top, left, crop_h, crop_w, out_h, out_w


@dataclasses.dataclass(frozen=True)
class SliceGeometry:
  """What is needed to map slice-grid predictions back to the original volume.

  Attributes:
    volume_shape: original (X, Y, Z).
    crop_box: (top, left, crop_h, crop_w) in slice coordinates (rows = y, cols = x). top/left may
      be negative and the box may extend past the slice: that part was zero padding.
    size: (H, W) the cropped slices were resized to.
  """
  volume_shape: tuple[int, int, int]
  crop_box: tuple[int, int, int, int]
  size: tuple[int, int]

  def to_array(self) -> np.ndarray:
    """Fixed-length int64 vector (GEOMETRY_LENGTH) for storing in a record."""
    return np.array([*self.volume_shape, *self.crop_box, *self.size], np.int64)

  @classmethod
  def from_array(cls, array) -> 'SliceGeometry':
    a = [int(v) for v in np.asarray(array).reshape(-1)]
    if len(a) != GEOMETRY_LENGTH:
      raise ValueError(f'geometry vector needs {GEOMETRY_LENGTH} values, got {len(a)}')
    return cls(tuple(a[0:3]), tuple(a[3:7]), tuple(a[7:9]))


@dataclasses.dataclass(frozen=True)
class SliceStack:
  """The output of `Recipe.forward` for one case.

  Attributes:
    images: (Z, H, W, C * len(offsets)) float32, channel = modality * len(offsets) + offset.
    masks: (Z, H, W) uint8 in {0, 1} or, with the contour option, {0, 1, 2}.
    geometry: how to undo the spatial part of the recipe.
  """
  images: np.ndarray
  masks: np.ndarray
  geometry: SliceGeometry


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One paper's volume -> slice preprocessing.

  Attributes:
    name: key of this recipe in RECIPES (also written into the records).
    modalities: modality names to use, in channel order (matched case-insensitively against the
      layout's names); None = all modalities of the case, in the layout's order.
    crop: centre crop (H, W) in slice coordinates before resizing, zero-padding where the slice is
      smaller; None = the whole slice.
    size: final (H, W) after the linear resize.
    offsets: neighbour slice offsets stacked as channels; (0,) is plain 2D, ATLAS 2.5D uses
      (-2, -1, 0, 1). Slices beyond the volume ends are zeros. Must contain 0 (the mask's slice).
    normalize: 'zscore' = (v - mean) / std over the nonzero voxels of each volume and modality,
      background (exact zeros) kept at 0; 'minmax' = (v - min) / (max - min) per volume and
      modality, to [0, 1]; 'none' = raw intensities. Non-finite voxels become 0 first.
    groups: MDANet modality groups as numbers of input channels per group, e.g. (2, 2) = channels
      [0, 1] vs [2, 3]; metadata for the model, must sum to num_channels.
    contour: add class 2 = lesion pixels with a 4-neighbour outside the lesion (the 1-pixel inner
      border, image edges count as outside), computed on the final slice grid.
    storage_dtype: dtype of the stored slice tensors. float16 halves record size and read I/O; it is
      safe after normalisation because values are O(1) (z-scores within about +-10, min-max in
      [0, 1]) where float16's relative step 2**-11 (about 5e-4) is far below image noise, and they
      are far from its 65504 limit. With normalize='none' use 'float32'.
  """
  name: str
  modalities: tuple[str, ...] | None
  crop: tuple[int, int] | None
  size: tuple[int, int]
  offsets: tuple[int, ...] = (0,)
  normalize: str = 'zscore'
  groups: tuple[int, ...] | None = None
  contour: bool = False
  storage_dtype: str = 'float16'

  def __post_init__(self):
    if self.normalize not in NORMALIZATIONS:
      raise ValueError(f'{self.name}: normalize must be one of {NORMALIZATIONS}')
    if 0 not in self.offsets:
      raise ValueError(f'{self.name}: offsets {self.offsets} must contain 0')
    if self.groups is not None and self.modalities is not None:
      if sum(self.groups) != self.num_channels:
        raise ValueError(f'{self.name}: groups {self.groups} do not sum to {self.num_channels}')

  @property
  def num_channels(self) -> int:
    """Channels of one slice tensor: len(modalities) * len(offsets)."""
    if self.modalities is None:
      raise ValueError(f'{self.name}: channel count unknown when modalities is None')
    return len(self.modalities) * len(self.offsets)

  @property
  def slice_shape(self) -> tuple[int, int, int]:
    """Shape (H, W, C) of one slice tensor, i.e. the model input without the batch axis."""
    return (*self.size, self.num_channels)

  def select(self, image: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Picks this recipe's modalities, in its order, from a (C, X, Y, Z) image named `names`."""
    if self.modalities is None:
      return image
    index = {n.lower(): i for i, n in enumerate(names)}
    missing = [m for m in self.modalities if m.lower() not in index]
    if missing:
      raise KeyError(f'{self.name}: modalities {missing} not among {list(names)}')
    return image[[index[m.lower()] for m in self.modalities]]

  def forward(self, image: np.ndarray, mask: np.ndarray | None = None, *,
              modality_names: Sequence[str] | None = None) -> SliceStack:
    """Volume -> slices.

    Args:
      image: (C, X, Y, Z) float. If `modality_names` is given, the recipe's modalities are picked
        from it by name; otherwise C must already match the recipe's modalities.
      mask: (X, Y, Z) labels (anything > 0 is lesion) or None (masks are then all zero).
      modality_names: the names of image's C channels.

    Returns:
      SliceStack with images (Z, H, W, C * len(offsets)) float32 and masks (Z, H, W) uint8.
    """
    image = np.asarray(image)
    if image.ndim != 4:
      raise ValueError(f'{self.name}: image must be (C, X, Y, Z), got {image.shape}')
    if modality_names is not None:
      image = self.select(image, modality_names)
    elif self.modalities is not None and image.shape[0] != len(self.modalities):
      raise ValueError(f'{self.name}: expected {len(self.modalities)} modalities, '
                       f'got {image.shape[0]}')
    volume_shape = tuple(int(s) for s in image.shape[1:])
    if mask is not None and tuple(mask.shape) != volume_shape:
      raise ValueError(f'{self.name}: mask {mask.shape} does not match image {volume_shape}')
    geometry = self.geometry_for(volume_shape)

    vol = np.stack([normalize_volume(v, self.normalize) for v in image])
    slices = resize_linear(_crop(vol.transpose(0, 3, 2, 1), geometry.crop_box), self.size)
    images = _stack_offsets(slices.transpose(1, 2, 3, 0), self.offsets)

    z, (h, w) = volume_shape[2], self.size
    if mask is None:
      masks = np.zeros((z, h, w), np.uint8)
    else:
      lesion = (np.asarray(mask) > 0).astype(np.float32).transpose(2, 1, 0)[None]
      lesion = resize_linear(_crop(lesion, geometry.crop_box), self.size)[0] >= 0.5
      masks = lesion.astype(np.uint8)
      if self.contour:
        masks += lesion_contour(lesion).astype(np.uint8)
    return SliceStack(images, masks, geometry)

  def geometry_for(self, volume_shape: Sequence[int]) -> SliceGeometry:
    """The geometry forward() records for a volume of shape (X, Y, Z)."""
    x, y, z = (int(s) for s in volume_shape)
    ch, cw = self.crop if self.crop is not None else (y, x)
    box = ((y - ch) // 2, (x - cw) // 2, ch, cw)  # floor: negative = padding
    return SliceGeometry((x, y, z), box, tuple(self.size))

  @staticmethod
  def inverse(probs: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """Slice-grid probabilities -> the original voxel grid.

    Args:
      probs: (Z, H, W) or (Z, H, W, K) probabilities on the recipe's slice grid.
      geometry: the SliceGeometry recorded by forward().

    Returns:
      float32 (X, Y, Z) or (X, Y, Z, K). Voxels outside the crop get probability 0, or for K > 1
      the background class (channel 0) gets 1. The caller thresholds / takes the argmax.
    """
    probs = np.asarray(probs, np.float32)
    x, y, z = geometry.volume_shape
    top, left, ch, cw = geometry.crop_box
    if probs.shape[:3] != (z, *geometry.size):
      raise ValueError(f'probs {probs.shape} do not match geometry {geometry}')
    multi = probs.ndim == 4
    stack = probs.transpose(3, 0, 1, 2) if multi else probs[None]
    stack = resize_linear(stack, (ch, cw))
    canvas = np.zeros((stack.shape[0], z, y, x), np.float32)
    if stack.shape[0] > 1:
      canvas[0] = 1.0
    (r0, r1), (c0, c1) = _overlap(top, ch, y), _overlap(left, cw, x)
    canvas[:, :, top + r0:top + r1, left + c0:left + c1] = stack[:, :, r0:r1, c0:c1]
    # canvas is (K, Z, Y, X); the volume is indexed [x, y, z(, k)].
    return np.ascontiguousarray(canvas.transpose(3, 2, 1, 0) if multi
                                else canvas[0].transpose(2, 1, 0))

  def to_storage(self, images: np.ndarray) -> np.ndarray:
    """Casts slice tensors to storage_dtype, refusing values the dtype cannot hold."""
    images = np.asarray(images)
    dtype = np.dtype(self.storage_dtype)
    if dtype.kind == 'f' and images.size and np.abs(images).max() > np.finfo(dtype).max:
      raise ValueError(f'{self.name}: images overflow {self.storage_dtype}')
    return images.astype(dtype)


def normalize_volume(vol: np.ndarray, method: str) -> np.ndarray:
  """Per-volume intensity normalisation of one modality (see Recipe.normalize)."""
  vol = np.nan_to_num(np.asarray(vol, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
  if method == 'none':
    return vol
  if method == 'minmax':
    lo, hi = float(vol.min()), float(vol.max())
    if hi <= lo:
      return np.zeros_like(vol)
    return (vol - np.float32(lo)) * np.float32(1.0 / (hi - lo))
  if method == 'zscore':
    brain = vol != 0
    values = vol[brain].astype(np.float64)
    if values.size == 0:
      return vol
    mean, std = values.mean(), values.std()
    scale = 1.0 / std if std > 0 else 1.0
    out = (vol - np.float32(mean)) * np.float32(scale)
    out[~brain] = 0.0
    return out
  raise ValueError(f'unknown normalisation {method!r}')


def lesion_contour(lesion: np.ndarray) -> np.ndarray:
  """1-pixel inner border of a boolean (..., H, W) lesion: pixels with a 4-neighbour outside it.

  Pixels on the image edge count as having an outside neighbour.
  """
  lesion = np.asarray(lesion, bool)
  inner = lesion.copy()
  inner[..., 1:, :] &= lesion[..., :-1, :]
  inner[..., :-1, :] &= lesion[..., 1:, :]
  inner[..., :, 1:] &= lesion[..., :, :-1]
  inner[..., :, :-1] &= lesion[..., :, 1:]
  inner[..., 0, :] = inner[..., -1, :] = False
  inner[..., :, 0] = inner[..., :, -1] = False
  return lesion & ~inner


@functools.lru_cache(maxsize=64)
def _taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Order-1 resampling taps (i0, i1, weight of i1): half-pixel centres, edges clamped."""
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  src = np.clip(src, 0.0, n_in - 1)
  i0 = np.floor(src).astype(np.intp)
  i1 = np.minimum(i0 + 1, n_in - 1)
  frac = (src - i0).astype(np.float32)
  for a in (i0, i1, frac):
    a.flags.writeable = False
  return i0, i1, frac


def resize_linear(stack: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Resizes the last two axes of (..., H, W) to `size`, order 1, float32.

  Separable two-tap gathers, not BLAS: no thread pool (which thrashed on a shared machine) and a
  fixed summation order, so records are bitwise reproducible. Same size = the input, exactly.
  """
  out = np.asarray(stack, np.float32)
  for axis, n_out in ((-1, size[1]), (-2, size[0])):
    n_in = out.shape[axis]
    if n_out != n_in:
      i0, i1, frac = _taps(n_out, n_in)
      lo, hi = out.take(i0, axis=axis), out.take(i1, axis=axis)
      hi -= lo
      hi *= frac if axis == -1 else frac[:, None]
      lo += hi
      out = lo
  return out


def _overlap(start: int, length: int, limit: int) -> tuple[int, int]:
  """Range [a, b) within a box of `length` starting at `start` that lies inside [0, limit)."""
  return max(0, -start), min(length, limit - start)


def _crop(slices: np.ndarray, box: Sequence[int]) -> np.ndarray:
  """Centre crop / zero pad of (..., H, W) slices to the box (top, left, crop_h, crop_w)."""
  top, left, ch, cw = box
  h, w = slices.shape[-2:]
  if (top, left, ch, cw) == (0, 0, h, w):
    return slices
  out = np.zeros((*slices.shape[:-2], ch, cw), np.float32)
  (r0, r1), (c0, c1) = _overlap(top, ch, h), _overlap(left, cw, w)
  out[..., r0:r1, c0:c1] = slices[..., top + r0:top + r1, left + c0:left + c1]
  return out


def _stack_offsets(slices: np.ndarray, offsets: Sequence[int]) -> np.ndarray:
  """(Z, H, W, M) -> (Z, H, W, M * len(offsets)), channel = m * len(offsets) + o, zero padded."""
  z = slices.shape[0]
  out = np.zeros((*slices.shape, len(offsets)), np.float32)
  for o, d in enumerate(offsets):
    lo, hi = max(0, -d), min(z, z - d)
    if hi > lo:
      out[lo:hi, ..., o] = slices[lo + d:hi + d]
  return out.reshape(*slices.shape[:-1], -1)


_AGMR = Recipe(
    name='agmr_2p5d', modalities=('T1',), crop=(180, 180),
    # The AGMR paper's text says "resized to 194" but its architecture table takes 192x192x4
    # (and D-UNet's code uses 192): 192 it is.
    size=(192, 192), offsets=(-2, -1, 0, 1), normalize='zscore')

_MDANET_2018 = Recipe(
    name='mdanet_isles2018', modalities=('CBF', 'CBV', 'MTT', 'Tmax'), crop=None,
    # ISLES 2018 perfusion maps are 256x256 in-plane; the paper states no resize. Its
    # normalisation is unstated: per-volume min-max keeps each physical map in [0, 1] with a common
    # zero background, so the group features it subtracts start on one scale.
    size=(256, 256), normalize='minmax', groups=(2, 2))

_MDANET_2022 = Recipe(
    name='mdanet_isles2022', modalities=('DWI', 'ADC'), crop=None,
    # Paper 002 gives no input size; 112x112 is ISLES 2022's most common DWI/ADC in-plane grid.
    # (Its GFLOPs ratio 11.22 / 3.57 would fit (256/144)**2 instead.) MRI intensities are in
    # arbitrary scanner units with bright DWI outliers, so z-score over the brain, not min-max.
    size=(112, 112), normalize='zscore', groups=(1, 1))

_THESIS_MRI = Recipe(
    name='thesis_mri',
    # ISLES 2017: the thesis's best input combination (ADC + TTP + Tmax, Table 1).
    modalities=('ADC', 'TTP', 'Tmax'), crop=None, size=(224, 224), normalize='minmax')

_THESIS_CT = Recipe(
    name='thesis_ct',
    # ISLES 2018: the thesis lists the CT image and the four perfusion maps per study and does
    # not narrow them down; all five are used.
    modalities=('CT', 'CBF', 'CBV', 'MTT', 'Tmax'), crop=None, size=(224, 224),
    normalize='minmax', contour=True)

RECIPES: dict[str, Recipe] = {
    'agmr_2p5d': _AGMR,
    'agmr_2p5d_demo': dataclasses.replace(_AGMR, name='agmr_2p5d_demo', size=(96, 96)),
    'clci': Recipe(
        name='clci', modalities=('T1',),
        # ATLAS slices are 233 (y) x 197 (x); CLCI-Net crops them to 224x176 and does not resize.
        crop=(224, 176), size=(224, 176), normalize='zscore'),
    'mdanet_isles2018': _MDANET_2018,
    'mdanet_isles2018_demo': dataclasses.replace(
        _MDANET_2018, name='mdanet_isles2018_demo', size=(96, 96)),
    'mdanet_isles2022': _MDANET_2022,
    'thesis_mri': _THESIS_MRI,
    'thesis_ct': _THESIS_CT,
    'thesis_ct_demo': dataclasses.replace(_THESIS_CT, name='thesis_ct_demo', size=(96, 96)),
    # Tests and smoke runs on the synthetic_tiny* datasets: whole slices resized to 32x32.
    'tiny_2p5d': dataclasses.replace(_AGMR, name='tiny_2p5d', crop=None, size=(32, 32)),
    'tiny_2d': Recipe(name='tiny_2d', modalities=('T1',), crop=None, size=(32, 32)),
    'tiny_mdanet_ct': dataclasses.replace(_MDANET_2018, name='tiny_mdanet_ct', size=(32, 32)),
    'tiny_mdanet_mri': dataclasses.replace(_MDANET_2022, name='tiny_mdanet_mri', size=(32, 32)),
    'tiny_thesis_ct': dataclasses.replace(_THESIS_CT, name='tiny_thesis_ct', size=(32, 32)),
}
