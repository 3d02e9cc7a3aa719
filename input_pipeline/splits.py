"""Patient-level splits: every case lands in exactly one of K folds.

Slice records are written once, as splits `fold0` ... `fold{K-1}`; every protocol is a union of
folds, so no slice is stored twice and no patient ever straddles two splits:

- the default train/validation/test protocol is `test_fold=4, val_fold=3` (60/20/20 by patient,
  close to CLCI-Net's 120/40/60 ATLAS protocol);
- K-fold cross-validation (MDANet's tables) runs fold k as `test_fold=k`, and validates on
  `val_fold` (or on nothing when it is None).

Assignment is a seeded permutation of the sorted case ids dealt round-robin, so it depends only on
the set of case ids, the number of folds and the seed -- never on file-system order.
"""

from collections.abc import Sequence

import numpy as np


def assign_folds(case_ids: Sequence[str], num_folds: int = 5,
                 seed: int = 0) -> dict[str, int]:
  """Maps each case id to a fold in [0, num_folds), sizes differing by at most one."""
  ids = sorted(set(case_ids))
  if len(ids) != len(case_ids):
    raise ValueError('case ids must be unique')
  if len(ids) < num_folds:
    raise ValueError(f'{len(ids)} cases cannot fill {num_folds} folds')
  order = np.random.default_rng(seed).permutation(len(ids))
  return {ids[i]: int(pos % num_folds) for pos, i in enumerate(order)}


def fold_split(folds: Sequence[int]) -> str:
  """The TFDS split string for a union of folds, e.g. 'fold0+fold2'."""
  if not folds:
    raise ValueError('a split needs at least one fold')
  return '+'.join(f'fold{k}' for k in sorted(folds))


def protocol_splits(num_folds: int, test_fold: int,
                    val_fold: int | None) -> dict[str, str]:
  """TFDS split strings for 'train', 'validation' (if any) and 'test'."""
  for name, k in (('test_fold', test_fold), ('val_fold', val_fold)):
    if k is not None and not 0 <= k < num_folds:
      raise ValueError(f'{name}={k} is not a fold of {num_folds}')
  if val_fold == test_fold:
    raise ValueError('val_fold and test_fold must differ')
  held = {test_fold} | ({val_fold} if val_fold is not None else set())
  splits = {'train': fold_split([k for k in range(num_folds) if k not in held]),
            'test': fold_split([test_fold])}
  if val_fold is not None:
    splits['validation'] = fold_split([val_fold])
  return splits
