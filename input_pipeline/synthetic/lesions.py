"""Building blocks of the synthetic stroke datasets: anatomy, lesion shapes, jitter, bias, noise.

Anatomy is nilearn's MNI152 2009 template and tissue maps (shipped with nilearn, no download):
197x233x189 voxels of 1 mm, the grid of ATLAS R1.2. Lesions are drawn in that space as
thresholded smooth random fields inside a local box (so a lesion costs what its box costs, never
the whole volume) and resampled, with a rigid jitter, onto each dataset's own grid
(resample.py).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage as ndi

from input_pipeline.synthetic import resample

BRAIN_BIT = 128  # bit of the uint8 label volume that marks the brain; lesion k uses bit k (k < 7)


def mni_maps(thick_slices: bool = False) -> dict[str, np.ndarray]:
  """MNI152 template maps as read-only float32 arrays plus 'affine' (float64, 4x4).

  Keys: t1 (0..1, skull-stripped), brain (0/1), gm, wm, csf (tissue probabilities; csf is the
  brain mask minus gm and wm). With `thick_slices`, the tissue maps are blurred along z to mimic
  the partial volume of ~5-6 mm slices (sampling them at slice centres then stands for slab
  averaging, which holds while the jitter rotation is small).
  """
  return _mni_maps(bool(thick_slices))  # one cache key per value, however it is passed


@functools.lru_cache(maxsize=2)
def _mni_maps(thick_slices: bool) -> dict[str, np.ndarray]:
  if thick_slices:
    maps = dict(_mni_maps(False))
    for key in ('gm', 'wm', 'csf'):
      maps[key] = _readonly(ndi.gaussian_filter1d(maps[key], sigma=1.6, axis=2, mode='constant'))
    return maps
  from nilearn import datasets  # imported lazily: nilearn is slow to import
  load = lambda fn: np.asarray(fn(resolution=1).get_fdata(dtype=np.float32), np.float32)
  t1_img = datasets.load_mni152_template(resolution=1)
  brain = load(datasets.load_mni152_brain_mask) > 0.5
  gm = load(datasets.load_mni152_gm_template) * brain
  wm = load(datasets.load_mni152_wm_template) * brain
  csf = np.clip(brain - gm - wm, 0.0, 1.0)
  t1 = np.asarray(t1_img.get_fdata(dtype=np.float32), np.float32)
  maps = {'t1': t1, 'brain': brain.astype(np.float32), 'gm': gm, 'wm': wm, 'csf': csf,
          'affine': np.asarray(t1_img.affine, np.float64)}
  return {k: _readonly(v) for k, v in maps.items()}


def _readonly(a: np.ndarray) -> np.ndarray:
  a = np.ascontiguousarray(a)  # NIfTI data come Fortran-ordered; sample() wants C order
  a.setflags(write=False)
  return a


@functools.lru_cache(maxsize=1)
def mni_head() -> dict[str, np.ndarray]:
  """Crude head for CT: 'head' (inside the scalp) and 'bone' (skull) maps, z-blurred like
  mni_maps(True). Built from the distance to the brain mask: 2-8 mm skull, scalp to 10 mm."""
  brain = mni_maps()['brain'] > 0
  dist = ndi.distance_transform_edt(~brain)
  head = (dist <= 10).astype(np.float32)
  bone = ((dist > 2) & (dist <= 8)).astype(np.float32)
  blur = lambda a: _readonly(ndi.gaussian_filter1d(a, sigma=1.6, axis=2, mode='constant'))
  return {'head': blur(head), 'bone': blur(bone)}


@functools.lru_cache(maxsize=1)
def _lesion_sites() -> tuple[np.ndarray, np.ndarray]:
  """Flat indices of tissue voxels where a lesion centre may fall: (supratentorial, lower)."""
  maps = mni_maps()
  tissue = (maps['gm'] + maps['wm'] >= 0.6) & (maps['brain'] > 0)
  # MNI z = -15 mm splits cerebrum from cerebellum/brainstem, roughly.
  z_split = int(round(np.linalg.inv(maps['affine'])[2] @ np.array([0.0, 0.0, -15.0, 1.0])))
  upper = tissue.copy()
  upper[:, :, :z_split] = False
  lower = tissue & ~upper
  return np.flatnonzero(upper), np.flatnonzero(lower)


def sample_volume_mm3(rng: np.random.Generator, lo_ml: float, hi_ml: float) -> float:
  """A lesion volume in mm3, log-uniform between lo_ml and hi_ml cm3."""
  return float(np.exp(rng.uniform(np.log(lo_ml), np.log(hi_ml))) * 1000.0)


def smooth_noise(rng: np.random.Generator, shape, corr_vox: float) -> np.ndarray:
  """Smooth gaussian random field of ~unit std and correlation length `corr_vox` voxels.

  Drawn on a coarse grid (step corr/2), blurred there and linearly upsampled axis by axis, so
  its cost grows with the output size only, whatever the correlation length.
  """
  shape = tuple(int(s) for s in shape)
  step = max(corr_vox / 2.0, 1.0)
  coarse_shape = tuple(int(np.ceil((s - 1) / step)) + 3 for s in shape)
  coarse = ndi.gaussian_filter(rng.standard_normal(coarse_shape), sigma=1.0, mode='wrap')
  out = coarse
  for axis, (n_fine, n_coarse) in enumerate(zip(shape, coarse_shape)):
    pos = 1.0 + np.arange(n_fine) / step
    weights = np.zeros((n_fine, n_coarse))
    left = np.minimum(np.floor(pos).astype(int), n_coarse - 2)
    frac = pos - left
    weights[np.arange(n_fine), left] = 1.0 - frac
    weights[np.arange(n_fine), left + 1] = frac
    out = np.moveaxis(np.tensordot(weights, out, axes=([1], [axis])), 0, axis)
  out = out.astype(np.float32)
  std = float(out.std())
  return (out - out.mean()) / (std if std > 0 else 1.0)


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
  """A 3x3 rotation with each Euler angle uniform in [-max_deg, max_deg]."""
  ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
  rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
  ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
  rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
  return rx @ ry @ rz


def make_blob(rng: np.random.Generator, volume_mm3: float,
              spacing=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
  """An irregular lesion of about `volume_mm3` in a local box: (bool mask, float32 soft map).

  Score = random ellipsoid envelope + smooth noise; the mask is its top-n voxels (n = the
  volume in voxels, so volumes are exact up to ties), which may be several pieces like real
  lesions. The soft map (0..1, 0.5 on the mask border) gives the intensity change soft edges.
  """
  spacing = np.asarray(spacing, np.float64)
  radius = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
  axes = np.exp(np.clip(rng.normal(0.0, 0.3, 3), -0.5, 0.5))
  axes /= np.prod(axes) ** (1.0 / 3.0)
  half = np.ceil(1.7 * radius * axes.max() / spacing).astype(int) + 2
  shape = 2 * half + 1
  coords = [((np.arange(n) - h) * s).astype(np.float32) for n, h, s in zip(shape, half, spacing)]
  rot = random_rotation(rng, 180.0)
  env = np.zeros(shape, np.float32)
  for i in range(3):  # -|q|^2 with q = R^T x / (radius * axes), summed one rotated axis at a time
    q = sum(rot[j, i] * coords[j].reshape([-1 if k == j else 1 for k in range(3)])
            for j in range(3)) / (radius * axes[i])
    env -= (q ** 2).astype(np.float32)
  corr_mm = max(1.5, radius * rng.uniform(0.3, 0.6))
  noise = smooth_noise(rng, shape, corr_mm / float(spacing.min()))
  score = env + np.float32(rng.uniform(0.6, 1.4)) * noise
  n = int(min(max(round(volume_mm3 / np.prod(spacing)), 1), score.size))
  thr = np.partition(score.ravel(), score.size - n)[score.size - n]
  mask = score >= thr
  width = 2.0 * rng.uniform(0.7, 2.0) / radius  # ~edge width in mm times the envelope slope
  soft = 1.0 / (1.0 + np.exp(np.clip((thr - score) / np.float32(width), -30.0, 30.0)))
  return mask, soft.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Lesion:
  """A lesion in MNI space: its box starts at voxel `origin` and holds `mask` and `soft`."""
  origin: tuple[int, int, int]
  mask: np.ndarray
  soft: np.ndarray

  @property
  def box(self) -> tuple[slice, slice, slice]:
    return tuple(slice(o, o + s) for o, s in zip(self.origin, self.mask.shape))

  def centroid(self) -> np.ndarray:
    """Voxel coordinates of the mask's centre (the box centre for an empty mask)."""
    idx = np.argwhere(self.mask)
    centre = idx.mean(0) if len(idx) else (np.array(self.mask.shape) - 1) / 2.0
    return centre + np.array(self.origin)


def place_lesion(rng: np.random.Generator, volume_mm3: float,
                 p_lower: float = 0.1) -> Lesion:
  """A blob centred on a random tissue voxel of the MNI brain, clipped to the brain mask.

  The centre is supratentorial except with probability `p_lower` (cerebellum/brainstem). The
  clipping can make cortical lesions smaller than `volume_mm3`.
  """
  maps = mni_maps()
  upper, lower = _lesion_sites()
  sites = lower if rng.uniform() < p_lower else upper
  mask, soft = make_blob(rng, volume_mm3)
  centre = np.array(np.unravel_index(sites[rng.integers(len(sites))], maps['brain'].shape))
  start = centre - np.array(mask.shape) // 2
  lo = np.maximum(start, 0)
  hi = np.minimum(start + np.array(mask.shape), maps['brain'].shape)
  inner = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
  brain = maps['brain'][tuple(slice(a, b) for a, b in zip(lo, hi))]
  return Lesion(tuple(int(v) for v in lo), mask[inner] & (brain > 0), soft[inner] * brain)


def label_volume(lesions: list[Lesion]) -> np.ndarray:
  """uint8 MNI volume: BRAIN_BIT on the brain, bit k on lesion k (for nearest resampling of
  brain and lesions in one pass, which keeps every lesion inside the resampled brain)."""
  if len(lesions) > 7:
    raise ValueError(f'at most 7 lesions fit the label bits, got {len(lesions)}')
  labels = (mni_maps()['brain'] > 0).astype(np.uint8) * np.uint8(BRAIN_BIT)
  for k, les in enumerate(lesions):
    labels[les.box] |= les.mask.astype(np.uint8) << k
  return labels


def soft_volume(lesions: list[Lesion]) -> np.ndarray:
  """float32 MNI volume: the maximum of the lesions' soft maps."""
  soft = np.zeros(mni_maps()['brain'].shape, np.float32)
  for les in lesions:
    np.maximum(soft[les.box], les.soft, out=soft[les.box])
  return soft


def bias_field(rng: np.random.Generator, shape, strength: float, region=None) -> np.ndarray:
  """Smooth multiplicative field exp(quadratic polynomial of the normalised coordinates), about
  1 +- strength over the volume; only its `region` = (lo, hi) part when given."""
  lo, hi = (np.zeros(3, int), np.array(shape)) if region is None else region
  grids = [np.linspace(-1.0, 1.0, int(n), dtype=np.float32)[a:b] for n, a, b in zip(shape, lo, hi)]
  x, y, z = grids[0][:, None, None], grids[1][None, :, None], grids[2][None, None, :]
  c = rng.normal(0.0, strength / 2.0, 9).astype(np.float32)
  log_b = (c[0] * x + c[1] * x * x) + (c[2] * y + c[3] * y * y) + (c[4] * z + c[5] * z * z)
  log_b = log_b + c[6] * x * y + c[7] * x * z + c[8] * y * z
  return np.exp(log_b).astype(np.float32)


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
  """Magnitude of the signal plus complex gaussian noise (Rician), float32."""
  real = signal + np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
  imag = np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
  return np.sqrt(real * real + imag * imag)


@functools.lru_cache(maxsize=1)
def support_box() -> tuple[np.ndarray, np.ndarray]:
  """(lo, hi) voxel box around the template's non-zero voxels."""
  nonzero = mni_maps()['t1'] > 0
  lo, hi = [], []
  for axis in range(3):
    hit = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
    lo.append(hit[0])
    hi.append(hit[-1] + 1)
  return np.array(lo), np.array(hi)


def box_centre_world() -> np.ndarray:
  """World (mm) centre of support_box(): roughly the centre of the brain."""
  lo, hi = support_box()
  affine = mni_maps()['affine']
  return affine[:3, :3] @ ((lo + hi - 1) / 2.0) + affine[:3, 3]


def scene(rng: np.random.Generator, shape, spacing, *, volume_ml: tuple[float, float],
          num_lesions: int, lesion_slab: bool = False, thick: bool = False,
          num_mimics: int = 0, head: bool = False, max_deg: float = 4.0) -> dict:
  """Anatomy and lesions resampled onto a new axis-aligned grid of `shape` and `spacing` mm.

  The grid is centred on the brain (with `lesion_slab`, its z centre is near the first lesion,
  as thin-slab scans are placed on the stroke), and the content gets a rigid jitter.
  Returns float32 gm, wm, csf, soft (lesions), mimic (soft maps of `num_mimics` extra blobs
  that are not lesions), bool brain, uint8 mask (within brain), the grid's affine, and with
  `head` the CT head/bone maps.
  """
  maps = mni_maps(thick)
  shape = tuple(int(s) for s in shape)
  spacing = np.asarray(spacing, np.float64)
  lesions = [place_lesion(rng, sample_volume_mm3(rng, *volume_ml), p_lower=0.05)
             for _ in range(num_lesions)]
  mimics = [place_lesion(rng, sample_volume_mm3(rng, 0.2, 10.0), p_lower=0.0)
            for _ in range(num_mimics)]
  centre = box_centre_world()
  if lesion_slab and lesions:
    lesion_z = (maps['affine'] @ np.append(lesions[0].centroid(), 1.0))[2]
    centre[2] = lesion_z + rng.uniform(-0.2, 0.2) * shape[2] * spacing[2]
  affine = np.diag(np.append(spacing, 1.0))
  affine[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2.0
  matrix, offset = resample.grid_transform(maps['affine'], affine,
                                           random_rotation(rng, max_deg),
                                           rng.uniform(-2.0, 2.0, 3), centre)
  sources = {k: (maps[k], 1) for k in ('gm', 'wm', 'csf')}
  sources.update(labels=(label_volume(lesions), 0), soft=(soft_volume(lesions), 1))
  if mimics:
    sources['mimic'] = (soft_volume(mimics), 1)
  if head:
    sources.update({k: (v, 1) for k, v in mni_head().items()})
  out = dict(zip(sources, resample.sample(list(sources.values()), matrix, offset, shape)))
  labels = out.pop('labels')
  out['brain'] = (labels & BRAIN_BIT) > 0
  out['mask'] = ((labels & (BRAIN_BIT - 1)) > 0).astype(np.uint8)
  out['soft'] *= out['brain']
  out['mimic'] = out['mimic'] * out['brain'] if mimics else np.zeros(shape, np.float32)
  out['affine'] = affine
  return out
