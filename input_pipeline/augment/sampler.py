"""Resampling of (H, W, C) slices and their masks at arbitrary source positions.

Speed (benchmarks/augment_speed.py): pixels move as single void items to keep numpy's inner loops
long, and the sampler reuses per-thread scratch buffers: slice-sized temporaries sit above glibc's
mmap threshold, and their page faults, not arithmetic, dominated the time.
"""

import functools
import threading

import numpy as np

from input_pipeline.recipes import lesion_contour

MASK_MODES = ('nearest', 'linear')


def _as_pixels(image: np.ndarray) -> np.ndarray:
  """(H, W, C) float32 -> (H, W) view whose items are whole pixels (no copy if C is contiguous)."""
  if image.dtype != np.float32 or image.strides[-1] != 4:
    image = np.ascontiguousarray(image, np.float32)
  return image.view(np.dtype((np.void, 4 * image.shape[-1])))[..., 0]


def contiguous_image(image: np.ndarray) -> np.ndarray:
  """The (H, W, C) image as a C-contiguous float32 array: itself when it already is one."""
  if image.flags.c_contiguous and image.dtype == np.float32:
    return image
  return np.ascontiguousarray(_as_pixels(image)).view(np.float32).reshape(image.shape)


@functools.lru_cache(maxsize=16)
def base_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
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
      rows, cols = base_grid(self.h, self.w)
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
