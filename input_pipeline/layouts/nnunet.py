"""Readers of nnU-Net v2 raw datasets and of nnU-Net style image folders (no labels)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Sequence

from input_pipeline.errors import DataError
from input_pipeline.layouts.common import SUFFIXES, Case, check_root, finish_cases, visible


def nnunet_meta(root: pathlib.Path) -> tuple[tuple[str, ...], str]:
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
  if ending not in SUFFIXES:
    raise DataError(path, f'file_ending {ending!r} is not supported (only .nii.gz and .nii)')
  return names, ending


def _group_channels(folder: pathlib.Path, names: Sequence[str], ending: str) -> list[Case]:
  """Groups {case}_{XXXX}{ending} files of a folder into cases with all channels."""
  if not folder.is_dir():
    raise DataError(folder, 'folder not found')
  pattern = re.compile(r'^(?P<case>.+)_(?P<ch>\d{4})' + re.escape(ending) + '$')
  groups: dict[str, dict[int, pathlib.Path]] = {}
  for path in visible(folder):
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
  root = check_root(root)
  names, ending = nnunet_meta(root)
  labels_dir = root / 'labelsTr'
  cases = []
  for case in _group_channels(root / 'imagesTr', names, ending):
    label = labels_dir / f'{case.case_id}{ending}'
    if not label.is_file() and require_masks:
      raise DataError(case.root, f'case {case.case_id} has no label (expected {label})')
    cases.append(dataclasses.replace(case, masks=(label,) if label.is_file() else ()))
  ids = {c.case_id for c in cases}
  if labels_dir.is_dir():
    for path in visible(labels_dir):
      if path.name.endswith(ending) and path.name[:-len(ending)] not in ids:
        raise DataError(path, 'label without images in imagesTr')
  return finish_cases(root, cases, 'nnunet', f'imagesTr/{{case}}_{{XXXX}}{ending}')


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
  folder = check_root(folder)
  names = (tuple(f'{i:04d}' for i in range(modalities)) if isinstance(modalities, int)
           else tuple(modalities))
  if not names:
    raise ValueError('need at least one channel')
  if file_ending not in SUFFIXES:
    raise ValueError(f'file_ending must be one of {SUFFIXES}, got {file_ending!r}')
  cases = _group_channels(folder, names, file_ending)
  return finish_cases(folder, cases, 'nnU-Net image', f'{{case}}_{{XXXX}}{file_ending}')
