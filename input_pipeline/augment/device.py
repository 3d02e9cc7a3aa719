"""The augmentation presets as one pure JAX function of a global batch, inside the jitted step.

`DeviceAugment.from_config(config, seed)` takes the same plain-data config as the host
`Augment.from_config` (the AUGMENT_PRESETS), builds the same chain of ops with the same
probabilities and parameter distributions, and applies it to a whole batch
{'image': (B, H, W, C), 'mask': (B, H, W), ...} on the device:

    batch = augment(batch, step)

Randomness: example i of the global batch at step s draws everything from
fold_in(fold_in(root, s), i), root = fold_in(key(seed), 2) (init and data order use other
branches of the seed). Examples are vmapped with their global indices, so a resumed run, and a run
on any number of devices (the batch is sharded along its leading axis), augment every example
identically.

All geometric ops (flips, quarter turns, rotation/scaling/translation, elastic) compose into one
source position per output pixel, sampled once: bilinear for the image, nearest neighbour for the
mask (or, with mask_mode='linear', the lesion resampled bilinearly and thresholded at 0.5, its
1-pixel contour class recomputed when the mask had one), with the host sampler's conventions
(input_pipeline.augment.sampler): the image reads `cval` and the mask 0 outside the slice. The
host resamples once per op; a chain of an affine and an elastic warp is therefore interpolated
once here and twice there. Flips and quarter turns are exact (integer positions). Brightness and
contrast come after, as on the host. An op that does not fire costs no random draw on the host;
here every op draws from its own key (fold_in(example key, op position)), so firing or not never
shifts the draws of the others.
"""

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from input_pipeline.augment import Augment
from input_pipeline.augment import transforms

_AUGMENT_STREAM = 2  # fold_in(key(seed), 2): augmentation's branch of the run seed.


def _lesion_contour(lesion: jax.Array) -> jax.Array:
  """recipes.lesion_contour in jnp: pixels of the (H, W) lesion with a 4-neighbour outside it."""
  padded = jnp.pad(lesion, 1, constant_values=False)
  inner = (lesion & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return lesion & ~inner


def _linear_taps(n_out: int, n_in: int) -> np.ndarray:
  """(n_out, n_in) matrix of recipes.resize_linear along one axis (half-pixel centres)."""
  if n_out == n_in:
    return np.eye(n_in)
  src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
  i0 = np.floor(src).astype(int)
  i1 = np.minimum(i0 + 1, n_in - 1)
  frac = src - i0
  out = np.zeros((n_out, n_in))
  np.add.at(out, (np.arange(n_out), i0), 1.0 - frac)
  np.add.at(out, (np.arange(n_out), i1), frac)
  return out


def _elastic_matrices(h: int, w: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
  """A_h (h, gh), A_w (w, gw): field = A_h @ noise @ A_w.T equals the host Elastic's
  gaussian_filter(mode='wrap') on the coarse grid followed by resize_linear to (h, w)."""
  step = max(1, int(sigma // 4))
  mats = []
  for n in (h, w):
    g = -(-n // step) + 1
    smooth = ndimage.gaussian_filter1d(np.eye(g), sigma / step, axis=0, mode='wrap')
    mats.append((_linear_taps(n, g) @ smooth).astype(np.float32))
  return mats[0], mats[1]


def _translation(dr, dc):
  return jnp.array([[1.0, 0.0, dr], [0.0, 1.0, dc], [0.0, 0.0, 1.0]], jnp.float32)


class _Geometry:
  """Draws one example's geometric transform: a 3x3 map output (row, col, 1) -> source."""

  def __init__(self, h: int, w: int):
    self.h, self.w = h, w

  def flip(self, axis: int) -> jax.Array:
    m = np.eye(3, dtype=np.float32)
    m[axis, axis], m[axis, 2] = -1.0, (self.h, self.w)[axis] - 1.0
    return jnp.asarray(m)

  def rot90(self, op: transforms.Rot90, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """np.rot90's k quarter turns: out[i, j] = in[j, N-1-i] for k = 1."""
    if self.h != self.w:
      raise ValueError(f'Rot90 needs square slices, got {(self.h, self.w)}')
    one = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, self.h - 1.0], [0.0, 0.0, 1.0]])
    mats = np.stack([np.linalg.matrix_power(one, k % 4) for k in op.choices]).astype(np.float32)
    pick = jax.random.randint(key, (), 0, len(op.choices))
    return jnp.asarray(mats)[pick], jnp.asarray(op.choices)[pick]

  def affine(self, op: transforms.Affine, key: jax.Array) -> tuple[jax.Array, dict]:
    """Affine.apply's matrix with each component drawn as Affine.__call__ draws it."""
    keys = jax.random.split(key, 6)
    fires = lambda k, on, p: jnp.asarray(on and p > 0) & ((p >= 1) | (jax.random.uniform(k) < p))
    angle = jnp.where(fires(keys[0], op.degrees > 0, op.p_rotate),
                      jax.random.uniform(keys[1], (), jnp.float32, -1.0, 1.0)
                      * math.radians(op.degrees), 0.0)
    lo, hi = op.scale if op.scale is not None else (1.0, 1.0)
    zoom = jnp.where(fires(keys[2], op.scale is not None, op.p_scale),
                     jax.random.uniform(keys[3], (), jnp.float32, lo, hi), 1.0)
    shift = jnp.where(fires(keys[4], op.translate > 0, op.p_translate),
                      jax.random.uniform(keys[5], (2,), jnp.float32, -op.translate, op.translate)
                      * jnp.array([self.h, self.w], jnp.float32), 0.0)
    cy, cx = (self.h - 1) / 2, (self.w - 1) / 2
    cos, sin = jnp.cos(angle) / zoom, jnp.sin(angle) / zoom
    oy, ox = cy + shift[0], cx + shift[1]
    m = jnp.stack([jnp.stack([cos, sin, cy - cos * oy - sin * ox]),
                   jnp.stack([-sin, cos, cx + sin * oy - cos * ox]),
                   jnp.array([0.0, 0.0, 1.0], jnp.float32)])
    return m, {'angle': angle, 'zoom': zoom, 'shift': shift}

  def elastic(self, op: transforms.Elastic, key: jax.Array) -> jax.Array:
    """(2, H, W) displacement field with the host Elastic's construction and RMS alpha."""
    a_h, a_w = _elastic_matrices(self.h, self.w, op.sigma)
    noise = jax.random.normal(key, (2, a_h.shape[1], a_w.shape[1]), jnp.float32)
    # Products summed along one axis at a time, not dots: XLA's CPU dot kernels change their
    # summation order with the batch they see, which made 1 and 8 devices differ by 1e-5.
    rows = jnp.sum(a_h[None, :, :, None] * noise[:, None], axis=2)  # (2, H, gw)
    field = jnp.sum(rows[:, :, None, :] * a_w[None, None], axis=-1)  # (2, H, W)
    return field * (op.alpha / (jnp.std(field, axis=(1, 2), keepdims=True) + 1e-6))


def _bilinear(image: jax.Array, r: jax.Array, c: jax.Array, cval: float) -> jax.Array:
  """sampler._Sampler.bilinear: (H, W, C) at source positions (H*W,), cval outside."""
  h, w, ch = image.shape
  pad = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), constant_values=cval).reshape(-1, ch)
  r = jnp.clip(r, -1.0, h) + 1.0
  c = jnp.clip(c, -1.0, w) + 1.0
  r0, c0 = jnp.minimum(jnp.floor(r), h), jnp.minimum(jnp.floor(c), w)
  wr, wc = (r - r0)[:, None], (c - c0)[:, None]
  idx = (r0 * (w + 2) + c0).astype(jnp.int32)
  v0, v1, v2, v3 = (jnp.take(pad, idx + o, axis=0, mode='clip') for o in (0, 1, w + 2, w + 3))
  top = v0 + (v1 - v0) * wc
  bottom = v2 + (v3 - v2) * wc
  return (top + (bottom - top) * wr).reshape(h, w, ch)


def _nearest(mask: jax.Array, r: jax.Array, c: jax.Array) -> jax.Array:
  """sampler._Sampler.nearest: (H, W) labels at source positions, 0 outside."""
  h, w = mask.shape
  r = jnp.floor(jnp.clip(r, -1.0, h) + 1.5)
  c = jnp.floor(jnp.clip(c, -1.0, w) + 1.5)
  idx = (r * (w + 2) + c).astype(jnp.int32)
  return jnp.take(jnp.pad(mask, 1).reshape(-1), idx, mode='clip').reshape(h, w)


class DeviceAugment:
  """The host chain's ops (probability, op) applied per example with JAX (see module docstring).

  Args:
    ops: (probability, op) pairs as in `Augment.ops` (input_pipeline.augment.transforms ops).
    seed: the run seed.
  """

  def __init__(self, ops: Sequence[tuple[float, object]], seed: int = 0):
    self.ops = tuple((float(p), op) for p, op in ops)
    known = (transforms.FlipH, transforms.FlipV, transforms.Rot90, transforms.Affine,
             transforms.Elastic, transforms.Brightness, transforms.Contrast)
    for _, op in self.ops:
      if not isinstance(op, known):
        raise ValueError(f'{type(op).__name__} has no device version; use augment_on=host')
    warps = [op for _, op in self.ops if isinstance(op, (transforms.Affine, transforms.Elastic))]
    modes = {(op.mask_mode, float(op.cval)) for op in warps}
    if len(modes) > 1:
      raise ValueError(f'one mask_mode and cval for every warp on the device, got {modes}')
    self.mask_mode, self.cval = modes.pop() if modes else ('nearest', 0.0)
    self.seed = int(seed)

  @classmethod
  def from_config(cls, config: Mapping | Sequence, seed: int = 0) -> 'DeviceAugment':
    """The chain `Augment.from_config(config)` builds, on the device."""
    return cls(Augment.from_config(config).ops, seed)

  def example_key(self, step, index) -> jax.Array:
    root = jax.random.fold_in(jax.random.key(self.seed), _AUGMENT_STREAM)
    return jax.random.fold_in(jax.random.fold_in(root, step), index)

  def draw(self, key: jax.Array, h: int, w: int) -> dict:
    """One example's parameters: 'matrix' (3x3, output -> source), 'field' ((2, H, W) or None),
    'brightness', 'contrast', and per op whether it fired (and the affine's angle/zoom/shift)."""
    geometry, matrix = _Geometry(h, w), jnp.eye(3, dtype=jnp.float32)
    out = {'field': None, 'brightness': jnp.float32(0.0), 'contrast': jnp.float32(1.0)}
    for i, (p, op) in enumerate(self.ops):
      fire_key, key_op = jax.random.split(jax.random.fold_in(key, i))
      fired = jnp.asarray(p >= 1.0) | ((p > 0.0) & (jax.random.uniform(fire_key) < p))
      name = type(op).__name__
      out[name] = fired
      step_matrix = None
      if isinstance(op, (transforms.FlipH, transforms.FlipV)):
        step_matrix = geometry.flip(1 if isinstance(op, transforms.FlipH) else 0)
      elif isinstance(op, transforms.Rot90):
        step_matrix, out['rot90_k'] = geometry.rot90(op, key_op)
      elif isinstance(op, transforms.Affine):
        step_matrix, params = geometry.affine(op, key_op)
        out.update(params)
      elif isinstance(op, transforms.Elastic):
        out['field'] = jnp.where(fired, geometry.elastic(op, key_op), 0.0)
      elif isinstance(op, transforms.Brightness):
        delta = jax.random.uniform(key_op, (), jnp.float32, -op.delta, op.delta)
        out['brightness'] = jnp.where(fired, out['brightness'] + delta, out['brightness'])
      else:
        factor = jax.random.uniform(key_op, (), jnp.float32, *op.range)
        out['contrast'] = jnp.where(fired, factor, jnp.float32(1.0))
      if step_matrix is not None:
        if out['field'] is not None:
          raise ValueError('a warp after the elastic deformation has no device version')
        # Output -> source of the chain so far, then of this op: earlier ops' inverses apply last.
        matrix = jnp.where(fired, matrix @ step_matrix, matrix)
    out['matrix'] = matrix
    return out

  def example(self, image: jax.Array, mask: jax.Array, key: jax.Array):
    """One (H, W, C) image and (H, W) mask augmented with the draws of `key`."""
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[:2]
    params = self.draw(key, h, w)
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                              indexing='ij')
    if params['field'] is not None:
      rows, cols = rows + params['field'][0], cols + params['field'][1]
    m = params['matrix']
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    r = m[0, 0] * rows + m[0, 1] * cols + m[0, 2]
    c = m[1, 0] * rows + m[1, 1] * cols + m[1, 2]
    image = _bilinear(image, r, c, self.cval)
    if self.mask_mode == 'nearest':
      mask = _nearest(mask, r, c)
    else:
      lesion = _bilinear((mask > 0).astype(jnp.float32)[..., None], r, c, 0.0)[..., 0] >= 0.5
      contour = jnp.where(jnp.any(mask == 2), _lesion_contour(lesion), False)
      mask = (lesion.astype(mask.dtype) + contour.astype(mask.dtype))
    image = (image + params['brightness']) * params['contrast']
    return image, mask

  def __call__(self, batch: dict, step) -> dict:
    """The global batch augmented for `step`; keys other than image and mask pass through."""
    if not self.ops:
      return batch
    n = batch['image'].shape[0]
    keys = jax.vmap(lambda i: self.example_key(step, i))(jnp.arange(n, dtype=jnp.uint32))
    image, mask = jax.vmap(self.example)(batch['image'], batch['mask'], keys)
    return {**batch, 'image': image, 'mask': mask}
