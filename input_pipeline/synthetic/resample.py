"""Resampling of MNI-space maps onto a dataset's grid, with a rigid jitter of the content.

Resampling follows scipy.ndimage.affine_transform's convention: an output voxel `o` reads the
source point `matrix @ o + offset`.
"""

from __future__ import annotations

import numpy as np


def grid_transform(src_affine: np.ndarray, dst_affine: np.ndarray, rotation: np.ndarray,
                   translation, centre_world) -> tuple[np.ndarray, np.ndarray]:
  """(matrix, offset) taking destination voxels to source voxels, with the content moved rigidly:
  world point p of the destination shows the source at R (p - c) + c + t."""
  centre = np.asarray(centre_world, np.float64)
  rigid = np.eye(4)
  rigid[:3, :3] = rotation
  rigid[:3, 3] = centre + np.asarray(translation, np.float64) - rotation @ centre
  full = np.linalg.inv(src_affine) @ rigid @ dst_affine
  return full[:3, :3], full[:3, 3]


def output_region(src_lo, src_hi, matrix, offset, out_shape, margin: int = 2):
  """(lo, hi) box of output voxels that can read the source box [src_lo, src_hi)."""
  corners = np.array([[a, b, c] for a in (src_lo[0] - 1, src_hi[0]) for b in
                      (src_lo[1] - 1, src_hi[1]) for c in (src_lo[2] - 1, src_hi[2])], float)
  out = (corners - offset) @ np.linalg.inv(matrix).T
  lo = np.clip(np.floor(out.min(0)).astype(int) - margin, 0, out_shape)
  hi = np.clip(np.ceil(out.max(0)).astype(int) + 1 + margin, 0, out_shape)
  return lo, np.maximum(hi, lo)


def sample(sources, matrix, offset, out_shape, region=None, chunk: int = 1 << 19) -> list:
  """Resamples each (array, order) of `sources` (one source grid) onto `out_shape`.

  Output voxel o reads source point `matrix @ o + offset`: order 1 is trilinear (float32 out),
  order 0 nearest (source dtype); outside the source reads 0. Only `region` = (lo, hi) of the
  output is computed, the rest is zero. One set of coordinates and weights serves all sources
  (much faster than scipy's affine_transform per map), computed slab by slab to bound memory.
  """
  out_shape = tuple(int(s) for s in out_shape)
  lo, hi = (np.zeros(3, int), np.array(out_shape)) if region is None else region
  src_shape = sources[0][0].shape
  if any(src.shape != src_shape for src, _ in sources):
    raise ValueError('all sources must share one grid')
  flats = [np.ascontiguousarray(src).reshape(-1) for src, _ in sources]
  outs = [np.zeros(out_shape, np.float32 if order else src.dtype) for src, order in sources]
  axes = [np.arange(lo[d], hi[d], dtype=np.float64) for d in range(3)]
  plane = max(int((hi[1] - lo[1]) * (hi[2] - lo[2])), 1)
  step = max(1, chunk // plane)
  for x0 in range(int(lo[0]), int(hi[0]), step):
    xs = axes[0][x0 - lo[0]:x0 - lo[0] + step]
    pts = [(matrix[d, 0] * xs[:, None, None] + matrix[d, 1] * axes[1][None, :, None]
            + matrix[d, 2] * axes[2][None, None, :] + offset[d]).ravel() for d in range(3)]
    corners = _corners(pts, src_shape) if any(order for _, order in sources) else None
    nearest = _nearest(pts, src_shape) if not all(order for _, order in sources) else None
    box = (slice(x0, x0 + len(xs)), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    shape = (len(xs), int(hi[1] - lo[1]), int(hi[2] - lo[2]))
    for flat, (_, order), out in zip(flats, sources, outs):
      if order:
        acc = np.zeros(len(pts[0]), np.float32)
        for index, weight in corners:
          acc += weight * flat[index]
      else:
        index, valid = nearest
        acc = np.where(valid, flat[index], 0).astype(flat.dtype)
      out[box] = acc.reshape(shape)
  return outs


def _corners(pts, shape):
  """[(flat index, weight)] of the 8 trilinear neighbours; outside neighbours get weight 0."""
  per_axis = []
  for s, n in zip(pts, shape):
    i0 = np.floor(s)
    f = (s - i0).astype(np.float32)
    pairs = []
    for idx, w in ((i0, 1.0 - f), (i0 + 1, f)):
      inside = (idx >= 0) & (idx < n)
      pairs.append((np.clip(idx, 0, n - 1).astype(np.int64), np.where(inside, w, 0)))
    per_axis.append(pairs)
  strides = (shape[1] * shape[2], shape[2], 1)
  return [(ix * strides[0] + iy * strides[1] + iz, (wx * wy * wz).astype(np.float32))
          for ix, wx in per_axis[0] for iy, wy in per_axis[1] for iz, wz in per_axis[2]]


def _nearest(pts, shape):
  """(flat index, inside mask) of the nearest source voxel."""
  flat, valid = 0, True
  for s, n, stride in zip(pts, shape, (shape[1] * shape[2], shape[2], 1)):
    idx = np.floor(s + 0.5)
    valid = valid & (idx >= 0) & (idx < n)
    flat = flat + np.clip(idx, 0, n - 1).astype(np.int64) * stride
  return flat, valid
