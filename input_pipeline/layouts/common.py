"""What the layout readers share: the Case record and the folder and file-name helpers."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

from input_pipeline.errors import DataError

SUFFIXES = ('.nii.gz', '.nii')


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


def natural_key(text: str):
  return [(0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', text)]


def visible(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted((p for p in folder.iterdir()
                 if not p.name.startswith('.') and p.name != '__MACOSX'),
                key=lambda p: natural_key(p.name))


def subdirs(folder: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in visible(folder) if p.is_dir()] if folder.is_dir() else []


def check_root(root: str | os.PathLike) -> pathlib.Path:
  root = pathlib.Path(root)
  if not root.exists():
    raise DataError(root, 'dataset folder does not exist')
  if not root.is_dir():
    raise DataError(root, 'dataset path is not a folder')
  if not visible(root):
    raise DataError(root, 'dataset folder is empty')
  return root


def find_nifti(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
  for suffix in SUFFIXES:
    path = folder / f'{stem}{suffix}'
    if path.is_file():
      return path
  return None


def strip_suffix(name: str) -> str | None:
  for suffix in SUFFIXES:
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return None


def require_file(case_dir: pathlib.Path, rel_stem: str, what: str) -> pathlib.Path:
  """The file `case_dir/rel_stem{.nii.gz,.nii}`, or DataError naming the case folder."""
  rel = pathlib.PurePosixPath(rel_stem)
  path = find_nifti(case_dir / rel.parent, rel.name)
  if path is None:
    raise DataError(case_dir, f'missing {what} (expected {rel_stem}.nii.gz or .nii)')
  return path


def finish_cases(root: pathlib.Path, cases: list[Case], layout: str, expected: str) -> list[Case]:
  if not cases:
    raise DataError(root, f'no {layout} case found; expected {expected}')
  seen = {}
  for case in cases:
    if case.case_id in seen:
      raise DataError(case.root, f'duplicate case id {case.case_id!r} (also in {seen[case.case_id]})')
    seen[case.case_id] = case.root
  return sorted(cases, key=lambda c: natural_key(c.case_id))
