"""Tiny labelled datasets in the nnU-Net raw layout, for tests and smoke runs.

Volumes are 40x36x12 voxels (spacing 1.0 x 1.2 x 3.0 mm) holding an ellipsoidal 'brain' with one or
two ellipsoidal lesions, each modality with its own lesion contrast (perfusion-like: CBF/CBV/CT/ADC
lower, MTT/Tmax/DWI/T1 higher), plus noise. Deterministic by (seed, case index); a case takes
milliseconds. These are for exercising the machinery, not for judging a method.
"""

import json
import pathlib

import nibabel as nib
import numpy as np

SHAPE = (40, 36, 12)
SPACING = (1.0, 1.2, 3.0)
# Lesion intensity relative to healthy tissue, per modality.
_CONTRAST = {'T1': 1.6, 'CT': 0.8, 'CBF': 0.35, 'CBV': 0.5, 'MTT': 1.8, 'Tmax': 2.2,
             'DWI': 1.8, 'ADC': 0.55}
TINY_MODALITIES = {
    'synthetic_tiny': ('T1',),
    'synthetic_tiny_ct': ('CT', 'CBF', 'CBV', 'MTT', 'Tmax'),
    'synthetic_tiny_mri': ('DWI', 'ADC'),
}


def tiny_case(rng: np.random.Generator, modalities) -> tuple[np.ndarray, np.ndarray]:
  """(C, X, Y, Z) float32 images and an (X, Y, Z) uint8 mask."""
  x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing='ij')
  brain = ((x - 20) / 17) ** 2 + ((y - 18) / 15) ** 2 + ((z - 6) / 7) ** 2 < 1
  mask = np.zeros(SHAPE, np.uint8)
  for _ in range(rng.integers(1, 3)):
    c = rng.uniform([12, 10, 3], [28, 26, 9])
    r = rng.uniform([3, 3, 1.5], [6, 6, 3])
    blob = (((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2) < 1
    mask |= (blob & brain).astype(np.uint8)
  images = []
  for m in modalities:
    image = np.where(brain, 100.0, 0.0) * np.where(mask > 0, _CONTRAST[m], 1.0)
    image = image + rng.normal(0, 8, SHAPE) * brain
    images.append(image.astype(np.float32))
  return np.stack(images), mask


def make_writer(name: str):
  """A per-case writer (root, index, seed) -> record, as synthetic.SYNTHETIC expects."""
  modalities = TINY_MODALITIES[name]

  def write(root: pathlib.Path, index: int, seed: int) -> dict:
    root = pathlib.Path(root)
    (root / 'imagesTr').mkdir(exist_ok=True)
    (root / 'labelsTr').mkdir(exist_ok=True)
    images, mask = tiny_case(np.random.default_rng([seed, index]), modalities)
    affine = np.diag([*SPACING, 1.0])
    case = f'tiny_{index:03d}'
    for k, image in enumerate(images):
      nib.save(nib.Nifti1Image(image, affine), root / 'imagesTr' / f'{case}_{k:04d}.nii.gz')
    nib.save(nib.Nifti1Image(mask, affine), root / 'labelsTr' / f'{case}.nii.gz')
    (root / 'dataset.json').write_text(json.dumps({
        'channel_names': {str(k): m for k, m in enumerate(modalities)},
        'labels': {'background': 0, 'lesion': 1}, 'file_ending': '.nii.gz'}))
    return {'id': case, 'lesion_voxels': int(mask.sum())}

  return write
