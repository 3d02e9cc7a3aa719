"""What a training config must satisfy, checked before anything is written or built: each
problem is one ValueError naming the field, the value and what is allowed."""

import pathlib

import ml_collections

from agmr_jax import models


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for the first field out of its range."""
  if config.model not in models.MODELS:
    raise ValueError(f'config.model: unknown network {config.model!r}; known: '
                     f'{", ".join(sorted(models.MODELS))}')
  d = config.data
  if d.num_folds < 2:
    raise ValueError(f'config.data.num_folds must be at least 2 (a test fold and one to train '
                     f'on), got {d.num_folds}')
  if not 0 <= d.test_fold < d.num_folds:
    raise ValueError(f'config.data.test_fold must be within 0..{d.num_folds - 1}, got '
                     f'{d.test_fold}')
  if d.val_fold != -1 and (not 0 <= d.val_fold < d.num_folds or d.val_fold == d.test_fold):
    raise ValueError(f'config.data.val_fold must be -1 (none) or a fold within '
                     f'0..{d.num_folds - 1} other than the test fold {d.test_fold}, got '
                     f'{d.val_fold}')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError(f'config.num_train_steps ({config.num_train_steps}) or config.num_epochs '
                     f'({config.num_epochs}) must be positive: the run would train no step')
  if d.get('read_threads', 2) < 1 or d.worker_count < 0:
    raise ValueError(f'config.data.read_threads must be at least 1 and config.data.worker_count '
                     f'at least 0, got {d.get("read_threads", 2)} and {d.worker_count}')
  data_dir = pathlib.Path(d.data_dir)
  if data_dir.exists() and not data_dir.is_dir():
    raise ValueError(f'{data_dir}: config.data.data_dir is a file, not a folder')
