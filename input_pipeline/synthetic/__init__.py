"""Synthetic stroke datasets, written as NIfTI in the real datasets' on-disk layouts.

    ids = write_dataset('synthetic_atlas', 'data/raw/atlas', num_subjects=20, seed=0)

`SYNTHETIC = {name: (writer, layout)}`; the layout names the reader in input_pipeline.layouts.
Subject k is drawn from SeedSequence([seed, k, crc32(layout)]), so it does not depend on how
many subjects are written, and the same seed gives identical arrays.

  synthetic_atlas      atlas_r12  MNI152 T1 (197x233x189, 1 mm, MNI affine), int16, WM ~430-1300;
                                  0-3 chronic lesions (hypointense: grey-matter-like margin,
                                  CSF-like core; 0.2-150 cm3), one mask
                                  file per lesion (one all-zero file when there is none)
  synthetic_isles2018  isles2018  CT (int16 HU) + CBF, CBV, MTT, Tmax; 256x256x8..16 of
                                  (0.8-1.0)^2 x 5 mm, uncompressed .nii; mask = core
  synthetic_isles2022  isles2022  DWI, ADC, FLAIR (int16), 98x116x94 of 2 mm, .nii.gz;
                                  0-2 old-lesion mimics that are not in the mask
  synthetic_isles2017  isles2017  ADC (int16) + rCBF, rCBV, MTT, TTP, Tmax; 192x192x16..24 of
                                  1.2x1.2x6 mm, uncompressed .nii

Perfusion maps are stored as int16 with a NIfTI scale factor (read them with get_fdata).
Images are skull-stripped (zero outside the brain) except CT. Masks are uint8 {0, 1}.

Modules: atlas.py and isles.py draw the subjects and write their trees, tiny.py the
synthetic_tiny* datasets; lesions.py (anatomy, lesions, noise) and resample.py are their building
blocks, common.py what every writer shares. This module writes a whole dataset.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import tempfile

from input_pipeline.synthetic import tiny
from input_pipeline.synthetic.atlas import atlas_subject, write_atlas_case
from input_pipeline.synthetic.atlas import _core_map  # noqa: F401  (tests reach it here)
from input_pipeline.synthetic.common import subject_rng
from input_pipeline.synthetic.isles import (isles2017_subject, isles2018_subject,
                                            isles2022_subject, write_isles2017_case,
                                            write_isles2018_case, write_isles2022_case,
                                            write_isles2022_description)

__all__ = ['SYNTHETIC', 'VERSIONS', 'atlas_subject', 'isles2017_subject', 'isles2018_subject',
           'isles2022_subject', 'subject_rng', 'tag', 'write_dataset']

SYNTHETIC = {
    'synthetic_atlas': (write_atlas_case, 'atlas_r12'),
    'synthetic_isles2018': (write_isles2018_case, 'isles2018'),
    'synthetic_isles2022': (write_isles2022_case, 'isles2022'),
    'synthetic_isles2017': (write_isles2017_case, 'isles2017'),
    # Tiny volumes for tests and smoke runs (tiny.py).
    **{name: (tiny.make_writer(name), 'nnunet') for name in tiny.TINY_MODALITIES},
}
_ROOT_FILES = {'isles2022': write_isles2022_description}
# Generator versions: a change to what a dataset's subjects look like bumps its version, which
# goes into the folder name (`tag`), so trees written by an older generator are never reused.
VERSIONS = {'synthetic_atlas': 3}


def tag(name: str, num_subjects: int, seed: int) -> str:
  """Folder (and records) name of a written dataset: 'synthetic_atlas-v3-n60-seed0'."""
  version = VERSIONS.get(name, 1)
  return f'{name}{f"-v{version}" if version > 1 else ""}-n{num_subjects}-seed{seed}'


def write_dataset(name: str, root: str | os.PathLike, num_subjects: int,
                  seed: int = 0) -> list[str]:
  """Writes synthetic dataset `name` with `num_subjects` subjects into the new folder `root`.

  The tree is built in a hidden sibling folder and moved into place at the end, so `root` is
  either complete or absent. Returns the case ids (the case folder names, in order).

  Raises:
    ValueError: unknown name, num_subjects < 1 or a negative seed.
    FileExistsError: `root` exists and is not an empty folder (nothing is ever overwritten).
  """
  if name not in SYNTHETIC:
    raise ValueError(f'unknown synthetic dataset {name!r}; known: {", ".join(sorted(SYNTHETIC))}')
  if int(num_subjects) != num_subjects or num_subjects < 1:
    raise ValueError(f'num_subjects must be a positive integer, got {num_subjects!r}')
  if int(seed) != seed or seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
  writer, layout = SYNTHETIC[name]
  root = pathlib.Path(root)
  _refuse_existing(root)
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
  try:
    os.chmod(tmp, 0o755)
    records = [writer(tmp, k, int(seed)) for k in range(int(num_subjects))]
    if layout in _ROOT_FILES:
      _ROOT_FILES[layout](tmp)
    meta = {'name': name, 'layout': layout, 'version': VERSIONS.get(name, 1), 'seed': int(seed),
            'num_subjects': int(num_subjects),
            'cases': records}
    (tmp / 'synthetic.json').write_text(json.dumps(meta, indent=1) + '\n')
    _refuse_existing(root)
    try:
      os.replace(tmp, root)  # an empty folder at root is replaced; a non-empty one fails
    except OSError as e:
      if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        raise FileExistsError(e.errno, 'refusing to overwrite', str(root)) from e
      raise
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return [r['id'] for r in records]


def _refuse_existing(root: pathlib.Path) -> None:
  if root.exists() and (not root.is_dir() or any(root.iterdir())):
    raise FileExistsError(errno.EEXIST, 'refusing to overwrite a non-empty path', str(root))
