"""Dataset layouts: find the cases (modality files and masks) under a dataset folder.

Readers only look at names on disk; volumes are read and validated by
`input_pipeline.nifti.load_case`. Every reader is `read_<layout>(root, *,
require_masks=True) -> list[Case]`, sorted by case_id in natural order
('case_2' before 'case_10'). Files may be .nii.gz or .nii everywhere.
"""

from __future__ import annotations

from typing import Callable

from input_pipeline.layouts.atlas import read_atlas_2, read_atlas_r12
from input_pipeline.layouts.common import Case, check_root
from input_pipeline.layouts.isles import (ISLES2017_MODALITIES, read_isles2015_siss,
                                          read_isles2017, read_isles2018, read_isles2022)
from input_pipeline.layouts.nnunet import nnunet_meta, read_nnunet, read_nnunet_images

__all__ = ['Case', 'LAYOUTS', 'MODALITIES', 'modalities_of', 'read_atlas_2', 'read_atlas_r12',
           'read_cases', 'read_isles2015_siss', 'read_isles2017', 'read_isles2018',
           'read_isles2022', 'read_nnunet', 'read_nnunet_images']

LAYOUTS: dict[str, Callable[..., list[Case]]] = {
    'atlas_r12': read_atlas_r12,
    'atlas_2': read_atlas_2,
    'isles2015_siss': read_isles2015_siss,
    'isles2017': read_isles2017,
    'isles2018': read_isles2018,
    'isles2022': read_isles2022,
    'nnunet': read_nnunet,
}

# Canonical modality order per layout; None = read from the dataset (see modalities_of).
MODALITIES: dict[str, tuple[str, ...] | None] = {
    'atlas_r12': ('T1',),
    'atlas_2': ('T1',),
    'isles2015_siss': ('T1', 'T2', 'Flair', 'DWI'),
    'isles2017': ISLES2017_MODALITIES,
    'isles2018': ('CT', 'CBF', 'CBV', 'MTT', 'Tmax'),
    'isles2022': ('DWI', 'ADC', 'FLAIR'),
    'nnunet': None,
}


def _check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f'unknown layout {layout!r}; known: {", ".join(LAYOUTS)}')


def modalities_of(layout: str, root=None) -> tuple[str, ...]:
  """The modality names, in order, of `layout` (nnunet: from {root}/dataset.json)."""
  _check_layout(layout)
  fixed = MODALITIES[layout]
  if fixed is not None:
    return fixed
  if root is None:
    raise ValueError(f'layout {layout!r} needs the dataset root to know its modalities')
  return nnunet_meta(check_root(root))[0]


def read_cases(layout: str, root, *, require_masks: bool = True) -> list[Case]:
  """LAYOUTS[layout](root), with a clear error for an unknown layout name."""
  _check_layout(layout)
  return LAYOUTS[layout](root, require_masks=require_masks)
