"""Readers of the ISLES family: 2015 SISS, 2017 and 2018 (SMIR-style trees) and 2022 (BIDS)."""

from __future__ import annotations

import pathlib

from input_pipeline.errors import DataError
from input_pipeline.layouts.common import (Case, check_root, find_nifti, finish_cases,
                                           require_file, strip_suffix, subdirs, visible)

ISLES2017_MODALITIES = ('ADC', 'rCBF', 'rCBV', 'MTT', 'TTP', 'Tmax')


def _smir_tag(name: str, prefix: str) -> str | None:
  """'SMIR.Brain.XX.O.MR_ADC.188855' -> 'mr_adc'; None if the name is not of that form."""
  parts = name.split('.')
  if len(parts) >= 4 and parts[0] == prefix and parts[1].startswith('Brain') and parts[-1].isdigit():
    return parts[-2].lower()
  return None


def _smir_file(folder: pathlib.Path) -> pathlib.Path:
  path = find_nifti(folder, folder.name)
  if path is not None:
    return path
  found = [p for p in visible(folder) if p.is_file() and strip_suffix(p.name)]
  if len(found) == 1:
    return found[0]
  raise DataError(folder, f'expected {folder.name}.nii or .nii.gz, found {len(found)} NIfTI files')


def _read_smir(root, layout: str, prefix: str, tags: dict[str, str],
               require_masks: bool) -> list[Case]:
  """Shared reader of the ISLES 2015/2017/2018 '{prefix}.Brain.XX.O.{tag}.{id}' trees."""
  root = check_root(root)
  by_tag = {tag.lower(): modality for modality, tag in tags.items()}
  cases = []
  for case_dir in subdirs(root):
    found, masks = {}, []
    for entry in visible(case_dir):
      name = entry.name if entry.is_dir() else strip_suffix(entry.name)
      tag = _smir_tag(name, prefix) if name else None
      if tag is None or (tag != 'ot' and tag not in by_tag):
        continue  # unrelated file, or an unused series such as 4D PWI
      path = _smir_file(entry) if entry.is_dir() else entry
      if tag == 'ot':
        masks.append(path)
      elif by_tag[tag] in found:
        raise DataError(case_dir, f'two files for modality {by_tag[tag]}: '
                        f'{found[by_tag[tag]].name} and {path.name}')
      else:
        found[by_tag[tag]] = path
    if not found and not masks:
      continue  # not a case folder
    missing = [m for m in tags if m not in found]
    if missing:
      raise DataError(case_dir, 'missing modality ' + ', '.join(
          f'{m} (expected folder {prefix}.Brain.XX.O.{tags[m]}.<id>)' for m in missing))
    if require_masks and not masks:
      raise DataError(case_dir, f'missing lesion mask (expected folder {prefix}.Brain.XX.O.OT.<id>)')
    cases.append(Case(case_dir.name, {m: found[m] for m in tags}, tuple(masks), case_dir))
  return finish_cases(root, cases, layout, f'{{case}}/{prefix}.Brain.XX.O.<series>.<id>/'
                      f'{prefix}.Brain.XX.O.<series>.<id>.nii for series '
                      + ', '.join(tags.values()) + ', OT')


def read_isles2015_siss(root, *, require_masks: bool = True) -> list[Case]:
  """ISLES 2015 SISS.

  Tree::

    {root}/{n}/VSD.Brain.XX.O.MR_{mod}.{id}/VSD.Brain.XX.O.MR_{mod}.{id}.nii   mod: T1 T2 Flair DWI
    {root}/{n}/VSD.Brain.XX.O.OT.{id}/VSD.Brain.XX.O.OT.{id}.nii               lesion mask

  case_id = the folder name {n} as is (sorted numerically).
  """
  tags = {'T1': 'MR_T1', 'T2': 'MR_T2', 'Flair': 'MR_Flair', 'DWI': 'MR_DWI'}
  return _read_smir(root, 'isles2015_siss', 'VSD', tags, require_masks)


def read_isles2017(root, *, require_masks: bool = True) -> list[Case]:
  """ISLES 2017.

  Tree::

    {root}/training_{n}/SMIR.Brain.XX.O.MR_{mod}.{id}/SMIR.Brain.XX.O.MR_{mod}.{id}.nii
        mod: ADC rCBF rCBV MTT TTP Tmax (others, e.g. 4DPWI, are ignored)
    {root}/training_{n}/SMIR.Brain.XX.O.OT.{id}/SMIR.Brain.XX.O.OT.{id}.nii

  case_id = the folder name (training_{n}).
  """
  tags = {m: f'MR_{m}' for m in ISLES2017_MODALITIES}
  return _read_smir(root, 'isles2017', 'SMIR', tags, require_masks)


def read_isles2018(root, *, require_masks: bool = True) -> list[Case]:
  """ISLES 2018 (CT perfusion).

  Tree::

    {root}/case_{n}/SMIR.Brain.XX.O.CT.{id}/SMIR.Brain.XX.O.CT.{id}.nii
    {root}/case_{n}/SMIR.Brain.XX.O.CT_{mod}.{id}/SMIR.Brain.XX.O.CT_{mod}.{id}.nii
        mod: CBF CBV MTT Tmax (CT_4DPWI, a 4D series, is ignored)
    {root}/case_{n}/SMIR.Brain.XX.O.OT.{id}/SMIR.Brain.XX.O.OT.{id}.nii

  case_id = the folder name (case_{n}).
  """
  tags = {'CT': 'CT', 'CBF': 'CT_CBF', 'CBV': 'CT_CBV', 'MTT': 'CT_MTT', 'Tmax': 'CT_Tmax'}
  return _read_smir(root, 'isles2018', 'SMIR', tags, require_masks)


def read_isles2022(root, *, require_masks: bool = True) -> list[Case]:
  """ISLES 2022 (BIDS).

  Tree::

    {root}/sub-strokecase{NNNN}/ses-0001/dwi/sub-strokecase{NNNN}_ses-0001_dwi.nii.gz
    {root}/sub-strokecase{NNNN}/ses-0001/dwi/sub-strokecase{NNNN}_ses-0001_adc.nii.gz
    {root}/sub-strokecase{NNNN}/ses-0001/anat/sub-strokecase{NNNN}_ses-0001_FLAIR.nii.gz
    {root}/derivatives/sub-strokecase{NNNN}/ses-0001/sub-strokecase{NNNN}_ses-0001_msk.nii.gz

  case_id = sub-strokecase{NNNN} (sub-..._ses-... if a subject has several
  sessions); Case.root = the sub-... folder.
  """
  root = check_root(root)
  cases = []
  for sub_dir in subdirs(root):
    if not sub_dir.name.startswith('sub-'):
      continue
    sessions = [s for s in subdirs(sub_dir) if s.name.startswith('ses-')]
    for ses_dir in sessions:
      ses, stem = ses_dir.name, f'{sub_dir.name}_{ses_dir.name}'
      images = {m: require_file(sub_dir, f'{ses}/{folder}/{stem}_{suffix}', f'{m} image')
                for m, folder, suffix in (('DWI', 'dwi', 'dwi'), ('ADC', 'dwi', 'adc'),
                                          ('FLAIR', 'anat', 'FLAIR'))}
      mask_dir = root / 'derivatives' / sub_dir.name / ses
      mask = find_nifti(mask_dir, f'{stem}_msk')
      if mask is None and require_masks:
        raise DataError(sub_dir, f'missing lesion mask (expected {mask_dir / stem}_msk.nii.gz)')
      case_id = sub_dir.name if len(sessions) == 1 else stem
      cases.append(Case(case_id, images, (mask,) if mask else (), sub_dir))
  return finish_cases(root, cases, 'isles2022',
                      'sub-strokecase{NNNN}/ses-0001/{dwi,anat}/sub-strokecase{NNNN}_ses-0001_'
                      '{dwi,adc,FLAIR}.nii.gz')
