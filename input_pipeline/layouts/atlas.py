"""Readers of the ATLAS family: R1.2 (site/subject folders) and 2.0 (BIDS)."""

from __future__ import annotations

import re

from input_pipeline.errors import DataError
from input_pipeline.layouts.common import (Case, check_root, find_nifti, finish_cases,
                                           require_file, subdirs, visible)

_ATLAS2_SPACE = 'space-MNI152NLin2009aSym'


def read_atlas_r12(root, *, require_masks: bool = True) -> list[Case]:
  """ATLAS R1.2 (MNI-registered T1w).

  Tree::

    {root}/{site}/{subject}/t01/{subject}_t1w_deface_stx.nii.gz
    {root}/{site}/{subject}/t01/{subject}_LesionSmooth_stx.nii.gz
    {root}/{site}/{subject}/t01/{subject}_LesionSmooth_{k}_stx.nii.gz   (optional, k=1,2,...)

  All lesion files of a subject go into `masks` (united at load time).
  case_id = subject; Case.root = {site}/{subject}.
  """
  root = check_root(root)
  cases = []
  for site in subdirs(root):
    for subject_dir in subdirs(site):
      t01 = subject_dir / 't01'
      if not t01.is_dir():
        continue
      subject = subject_dir.name
      image = require_file(subject_dir, f't01/{subject}_t1w_deface_stx', 'T1 image')
      mask_re = re.compile(rf'^{re.escape(subject)}_LesionSmooth(?:_(\d+))?_stx\.nii(?:\.gz)?$')
      found = [(m, p) for p in visible(t01) if (m := mask_re.match(p.name))]
      masks = tuple(p for _, p in sorted(found, key=lambda mp: int(mp[0][1] or 0)))
      if require_masks and not masks:
        raise DataError(subject_dir, f'missing lesion mask (expected t01/{subject}_LesionSmooth_stx.nii.gz)')
      cases.append(Case(subject, {'T1': image}, masks, subject_dir))
  return finish_cases(root, cases, 'atlas_r12',
                      '{site}/{subject}/t01/{subject}_t1w_deface_stx.nii.gz')


def read_atlas_2(root, *, require_masks: bool = True) -> list[Case]:
  """ATLAS 2.0 (BIDS, MNI152NLin2009aSym).

  Tree::

    {root}/Training/{cohort}/sub-{id}/ses-{s}/anat/
        sub-{id}_ses-{s}_space-MNI152NLin2009aSym_T1w.nii.gz
        sub-{id}_ses-{s}_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz
    {root}/Testing/{cohort}/sub-{id}/ses-{s}/anat/...T1w.nii.gz   (no mask needed)

  The `Training/{cohort}` (or `{cohort}`) levels may be absent: `{root}/sub-{id}/ses-{s}/anat`.
  Cases under a `Testing` folder need no mask. case_id = sub-{id}_ses-{s};
  Case.root = the ses-{s} folder.
  """
  root = check_root(root)
  cases = []
  for pattern in ('sub-*/ses-*/anat', '*/sub-*/ses-*/anat', '*/*/sub-*/ses-*/anat'):
    for anat in sorted(root.glob(pattern)):
      rel = anat.relative_to(root).parts
      if not anat.is_dir() or rel[0] == 'derivatives' or any(p.startswith('.') for p in rel):
        continue
      ses_dir = anat.parent
      case_id = f'{ses_dir.parent.name}_{ses_dir.name}'
      image = require_file(ses_dir, f'anat/{case_id}_{_ATLAS2_SPACE}_T1w', 'T1 image')
      mask_stem = f'{case_id}_{_ATLAS2_SPACE}_label-L_desc-T1lesion_mask'
      mask = find_nifti(anat, mask_stem)
      testing = 'Testing' in rel or root.name == 'Testing'
      if mask is None and require_masks and not testing:
        raise DataError(ses_dir, f'missing lesion mask (expected anat/{mask_stem}.nii.gz)')
      cases.append(Case(case_id, {'T1': image}, (mask,) if mask else (), ses_dir))
  return finish_cases(root, cases, 'atlas_2',
                      '[Training/{cohort}/]sub-{id}/ses-{s}/anat/sub-{id}_ses-{s}_'
                      f'{_ATLAS2_SPACE}_T1w.nii.gz')
