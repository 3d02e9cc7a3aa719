"""Dataset layouts: find the cases (modality files and masks) under a dataset folder.

Readers only look at names on disk; volumes are read and validated by
`input_pipeline.nifti.load_case`. Every reader is `read_<layout>(root, *,
require_masks=True) -> list[Case]`, sorted by case_id in natural order
('case_2' before 'case_10'). Files may be .nii.gz or .nii everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Callable, Sequence

from input_pipeline.errors import DataError

_SUFFIXES = ('.nii.gz', '.nii')
_ATLAS2_SPACE = 'space-MNI152NLin2009aSym'


@dataclasses.dataclass(frozen=True)
class Case:
  """One case of a dataset.

  Attributes:
    case_id: unique id within the dataset.
    images: modality name -> file, in the layout's canonical order.
    masks: lesion mask files (several are united at load time); empty for
      unlabeled data.
    root: the case's top-level folder (for nnU-Net: the images folder).
  """
  case_id: str
  images: dict[str, pathlib.Path] = dataclasses.field(hash=False)
  masks: tuple[pathlib.Path, ...] = dataclasses.field(hash=False)
  root: pathlib.Path


def _natural_key(text: str):
  return [(0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', text)]


def _visible(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted((p for p in folder.iterdir()
                 if not p.name.startswith('.') and p.name != '__MACOSX'),
                key=lambda p: _natural_key(p.name))


def _subdirs(folder: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in _visible(folder) if p.is_dir()] if folder.is_dir() else []


def _check_root(root: str | os.PathLike) -> pathlib.Path:
  root = pathlib.Path(root)
  if not root.exists():
    raise DataError(root, 'dataset folder does not exist')
  if not root.is_dir():
    raise DataError(root, 'dataset path is not a folder')
  if not _visible(root):
    raise DataError(root, 'dataset folder is empty')
  return root


def _nifti(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
  for suffix in _SUFFIXES:
    path = folder / f'{stem}{suffix}'
    if path.is_file():
      return path
  return None


def _strip_suffix(name: str) -> str | None:
  for suffix in _SUFFIXES:
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return None


def _require(case_dir: pathlib.Path, rel_stem: str, what: str) -> pathlib.Path:
  """The file `case_dir/rel_stem{.nii.gz,.nii}`, or DataError naming the case folder."""
  rel = pathlib.PurePosixPath(rel_stem)
  path = _nifti(case_dir / rel.parent, rel.name)
  if path is None:
    raise DataError(case_dir, f'missing {what} (expected {rel_stem}.nii.gz or .nii)')
  return path


def _finish(root: pathlib.Path, cases: list[Case], layout: str, expected: str) -> list[Case]:
  if not cases:
    raise DataError(root, f'no {layout} case found; expected {expected}')
  seen = {}
  for case in cases:
    if case.case_id in seen:
      raise DataError(case.root, f'duplicate case id {case.case_id!r} (also in {seen[case.case_id]})')
    seen[case.case_id] = case.root
  return sorted(cases, key=lambda c: _natural_key(c.case_id))


def read_atlas_r12(root, *, require_masks: bool = True) -> list[Case]:
  """ATLAS R1.2 (MNI-registered T1w).

  Tree::

    {root}/{site}/{subject}/t01/{subject}_t1w_deface_stx.nii.gz
    {root}/{site}/{subject}/t01/{subject}_LesionSmooth_stx.nii.gz
    {root}/{site}/{subject}/t01/{subject}_LesionSmooth_{k}_stx.nii.gz   (optional, k=1,2,...)

  All lesion files of a subject go into `masks` (united at load time).
  case_id = subject; Case.root = {site}/{subject}.
  """
  root = _check_root(root)
  cases = []
  for site in _subdirs(root):
    for subject_dir in _subdirs(site):
      t01 = subject_dir / 't01'
      if not t01.is_dir():
        continue
      subject = subject_dir.name
      image = _require(subject_dir, f't01/{subject}_t1w_deface_stx', 'T1 image')
      mask_re = re.compile(rf'^{re.escape(subject)}_LesionSmooth(?:_(\d+))?_stx\.nii(?:\.gz)?$')
      found = [(m, p) for p in _visible(t01) if (m := mask_re.match(p.name))]
      masks = tuple(p for _, p in sorted(found, key=lambda mp: int(mp[0][1] or 0)))
      if require_masks and not masks:
        raise DataError(subject_dir, f'missing lesion mask (expected t01/{subject}_LesionSmooth_stx.nii.gz)')
      cases.append(Case(subject, {'T1': image}, masks, subject_dir))
  return _finish(root, cases, 'atlas_r12', '{site}/{subject}/t01/{subject}_t1w_deface_stx.nii.gz')


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
  root = _check_root(root)
  cases = []
  for pattern in ('sub-*/ses-*/anat', '*/sub-*/ses-*/anat', '*/*/sub-*/ses-*/anat'):
    for anat in sorted(root.glob(pattern)):
      rel = anat.relative_to(root).parts
      if not anat.is_dir() or rel[0] == 'derivatives' or any(p.startswith('.') for p in rel):
        continue
      ses_dir = anat.parent
      case_id = f'{ses_dir.parent.name}_{ses_dir.name}'
      image = _require(ses_dir, f'anat/{case_id}_{_ATLAS2_SPACE}_T1w', 'T1 image')
      mask_stem = f'{case_id}_{_ATLAS2_SPACE}_label-L_desc-T1lesion_mask'
      mask = _nifti(anat, mask_stem)
      testing = 'Testing' in rel or root.name == 'Testing'
      if mask is None and require_masks and not testing:
        raise DataError(ses_dir, f'missing lesion mask (expected anat/{mask_stem}.nii.gz)')
      cases.append(Case(case_id, {'T1': image}, (mask,) if mask else (), ses_dir))
  return _finish(root, cases, 'atlas_2',
                 '[Training/{cohort}/]sub-{id}/ses-{s}/anat/sub-{id}_ses-{s}_'
                 f'{_ATLAS2_SPACE}_T1w.nii.gz')


def _smir_tag(name: str, prefix: str) -> str | None:
  """'SMIR.Brain.XX.O.MR_ADC.188855' -> 'mr_adc'; None if the name is not of that form."""
  parts = name.split('.')
  if len(parts) >= 4 and parts[0] == prefix and parts[1].startswith('Brain') and parts[-1].isdigit():
    return parts[-2].lower()
  return None


def _smir_file(folder: pathlib.Path) -> pathlib.Path:
  path = _nifti(folder, folder.name)
  if path is not None:
    return path
  found = [p for p in _visible(folder) if p.is_file() and _strip_suffix(p.name)]
  if len(found) == 1:
    return found[0]
  raise DataError(folder, f'expected {folder.name}.nii or .nii.gz, found {len(found)} NIfTI files')


def _read_smir(root, layout: str, prefix: str, tags: dict[str, str],
               require_masks: bool) -> list[Case]:
  """Shared reader of the ISLES 2015/2017/2018 '{prefix}.Brain.XX.O.{tag}.{id}' trees."""
  root = _check_root(root)
  by_tag = {tag.lower(): modality for modality, tag in tags.items()}
  cases = []
  for case_dir in _subdirs(root):
    found, masks = {}, []
    for entry in _visible(case_dir):
      name = entry.name if entry.is_dir() else _strip_suffix(entry.name)
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
  return _finish(root, cases, layout, f'{{case}}/{prefix}.Brain.XX.O.<series>.<id>/'
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
  tags = {m: f'MR_{m}' for m in MODALITIES['isles2017']}
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
  root = _check_root(root)
  cases = []
  for sub_dir in _subdirs(root):
    if not sub_dir.name.startswith('sub-'):
      continue
    sessions = [s for s in _subdirs(sub_dir) if s.name.startswith('ses-')]
    for ses_dir in sessions:
      ses, stem = ses_dir.name, f'{sub_dir.name}_{ses_dir.name}'
      images = {m: _require(sub_dir, f'{ses}/{folder}/{stem}_{suffix}', f'{m} image')
                for m, folder, suffix in (('DWI', 'dwi', 'dwi'), ('ADC', 'dwi', 'adc'),
                                          ('FLAIR', 'anat', 'FLAIR'))}
      mask_dir = root / 'derivatives' / sub_dir.name / ses
      mask = _nifti(mask_dir, f'{stem}_msk')
      if mask is None and require_masks:
        raise DataError(sub_dir, f'missing lesion mask (expected {mask_dir / stem}_msk.nii.gz)')
      case_id = sub_dir.name if len(sessions) == 1 else stem
      cases.append(Case(case_id, images, (mask,) if mask else (), sub_dir))
  return _finish(root, cases, 'isles2022',
                 'sub-strokecase{NNNN}/ses-0001/{dwi,anat}/sub-strokecase{NNNN}_ses-0001_'
                 '{dwi,adc,FLAIR}.nii.gz')


def _nnunet_meta(root: pathlib.Path) -> tuple[tuple[str, ...], str]:
  """(channel names in channel order, file ending) from {root}/dataset.json."""
  path = root / 'dataset.json'
  if not path.is_file():
    raise DataError(path, 'missing dataset.json (nnU-Net v2 raw dataset)')
  try:
    meta = json.loads(path.read_text(encoding='utf-8'))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(path, f'invalid JSON ({e})') from e
  channels = meta.get('channel_names', meta.get('modality')) if isinstance(meta, dict) else None
  if not isinstance(channels, dict) or not channels:
    raise DataError(path, "needs a non-empty 'channel_names' object such as {\"0\": \"T1\"}")
  try:
    by_index = {int(k): str(v) for k, v in channels.items()}
  except (TypeError, ValueError):
    raise DataError(path, f'channel_names keys must be channel indices "0", "1", ...; '
                    f'got {list(channels)}') from None
  if sorted(by_index) != list(range(len(by_index))):
    raise DataError(path, f'channel_names keys must be 0..{len(by_index) - 1}, got {list(channels)}')
  names = tuple(by_index[i] for i in range(len(by_index)))
  if len(set(names)) != len(names):
    raise DataError(path, f'duplicate channel names {names}')
  if not isinstance(meta.get('labels'), dict) or not meta['labels']:
    raise DataError(path, "needs a non-empty 'labels' object such as {\"background\": 0, \"lesion\": 1}")
  ending = meta.get('file_ending', '.nii.gz')
  if ending not in _SUFFIXES:
    raise DataError(path, f'file_ending {ending!r} is not supported (only .nii.gz and .nii)')
  return names, ending


def _group_channels(folder: pathlib.Path, names: Sequence[str], ending: str) -> list[Case]:
  """Groups {case}_{XXXX}{ending} files of a folder into cases with all channels."""
  if not folder.is_dir():
    raise DataError(folder, 'folder not found')
  pattern = re.compile(r'^(?P<case>.+)_(?P<ch>\d{4})' + re.escape(ending) + '$')
  groups: dict[str, dict[int, pathlib.Path]] = {}
  for path in _visible(folder):
    if not path.is_file() or not path.name.endswith(ending):
      continue
    m = pattern.match(path.name)
    if m is None:
      raise DataError(path, f'name does not follow {{case}}_{{XXXX}}{ending} (XXXX = channel)')
    channel = int(m['ch'])
    if channel >= len(names):
      raise DataError(path, f'channel {channel:04d} but only {len(names)} channel(s): {tuple(names)}')
    groups.setdefault(m['case'], {})[channel] = path
  cases = []
  for case_id, files in groups.items():
    missing = [i for i in range(len(names)) if i not in files]
    if missing:
      raise DataError(folder, f'case {case_id} is missing channel ' + ', '.join(
          f'{i:04d} ({names[i]}, expected {case_id}_{i:04d}{ending})' for i in missing))
    cases.append(Case(case_id, {names[i]: files[i] for i in range(len(names))}, (), folder))
  return cases


def read_nnunet(root, *, require_masks: bool = True) -> list[Case]:
  """nnU-Net v2 raw dataset.

  Tree::

    {root}/dataset.json        channel_names {"0": "T1", ...}, labels, file_ending (default .nii.gz)
    {root}/imagesTr/{case}_{XXXX}{file_ending}    XXXX = 4-digit channel index
    {root}/labelsTr/{case}{file_ending}

  Modalities are the channel names in channel order. Case.root = imagesTr.
  """
  root = _check_root(root)
  names, ending = _nnunet_meta(root)
  labels_dir = root / 'labelsTr'
  cases = []
  for case in _group_channels(root / 'imagesTr', names, ending):
    label = labels_dir / f'{case.case_id}{ending}'
    if not label.is_file() and require_masks:
      raise DataError(case.root, f'case {case.case_id} has no label (expected {label})')
    cases.append(dataclasses.replace(case, masks=(label,) if label.is_file() else ()))
  ids = {c.case_id for c in cases}
  if labels_dir.is_dir():
    for path in _visible(labels_dir):
      if path.name.endswith(ending) and path.name[:-len(ending)] not in ids:
        raise DataError(path, 'label without images in imagesTr')
  return _finish(root, cases, 'nnunet', f'imagesTr/{{case}}_{{XXXX}}{ending}')


def read_nnunet_images(folder, modalities: int | Sequence[str], *,
                       file_ending: str = '.nii.gz') -> list[Case]:
  """Groups an nnU-Net style folder of `{case}_{XXXX}{file_ending}` files (no labels).

  Args:
    folder: the folder (e.g. inference inputs).
    modalities: the channel names in channel order, or a channel count (names
      are then '0000', '0001', ...).
    file_ending: '.nii.gz' or '.nii'.

  Returns:
    Cases with empty `masks`, sorted by case_id.
  """
  folder = _check_root(folder)
  names = (tuple(f'{i:04d}' for i in range(modalities)) if isinstance(modalities, int)
           else tuple(modalities))
  if not names:
    raise ValueError('need at least one channel')
  if file_ending not in _SUFFIXES:
    raise ValueError(f'file_ending must be one of {_SUFFIXES}, got {file_ending!r}')
  cases = _group_channels(folder, names, file_ending)
  return _finish(folder, cases, 'nnU-Net image', f'{{case}}_{{XXXX}}{file_ending}')


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
    'isles2017': ('ADC', 'rCBF', 'rCBV', 'MTT', 'TTP', 'Tmax'),
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
  return _nnunet_meta(_check_root(root))[0]


def read_cases(layout: str, root, *, require_masks: bool = True) -> list[Case]:
  """LAYOUTS[layout](root), with a clear error for an unknown layout name."""
  _check_layout(layout)
  return LAYOUTS[layout](root, require_masks=require_masks)
