"""A tiny labelled dataset in the nnU-Net raw layout, for fast end-to-end tests.

Volumes are 40x36x12 voxels with one or two bright-ish ellipsoidal lesions in a noisy 'brain',
deterministic by seed; 10 cases take well under a second to write.
"""

import json
import pathlib

import nibabel as nib
import numpy as np

SHAPE = (40, 36, 12)
SPACING = (1.0, 1.2, 3.0)


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing='ij')
  brain = ((x - 20) / 17) ** 2 + ((y - 18) / 15) ** 2 + ((z - 6) / 7) ** 2 < 1
  image = np.where(brain, 100.0, 0.0).astype(np.float32)
  mask = np.zeros(SHAPE, np.uint8)
  for _ in range(rng.integers(1, 3)):
    c = rng.uniform([12, 10, 3], [28, 26, 9])
    r = rng.uniform([3, 3, 1.5], [6, 6, 3])
    blob = (((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2) < 1
    mask |= (blob & brain).astype(np.uint8)
  image = np.where(mask > 0, 160.0, image)
  image += rng.normal(0, 8, SHAPE).astype(np.float32) * brain
  return image.astype(np.float32), mask


def write_tiny_nnunet(root: pathlib.Path, num_cases: int = 10, seed: int = 0) -> pathlib.Path:
  """Writes {root}/imagesTr, labelsTr and dataset.json; returns root."""
  root = pathlib.Path(root)
  (root / 'imagesTr').mkdir(parents=True)
  (root / 'labelsTr').mkdir()
  affine = np.diag([*SPACING, 1.0])
  for k in range(num_cases):
    image, mask = _case(np.random.default_rng([seed, k]))
    nib.save(nib.Nifti1Image(image, affine), root / 'imagesTr' / f'tiny_{k:03d}_0000.nii.gz')
    nib.save(nib.Nifti1Image(mask, affine), root / 'labelsTr' / f'tiny_{k:03d}.nii.gz')
  (root / 'dataset.json').write_text(json.dumps({
      'channel_names': {'0': 'T1'}, 'labels': {'background': 0, 'lesion': 1},
      'numTraining': num_cases, 'file_ending': '.nii.gz'}))
  return root
