"""Which checkpoint evaluation and prediction restore: parse_checkpoint and choose_checkpoint with
stand-in managers (no training; the trained case is in test_evaluate.py)."""

import logging
import re
import types

import pytest

from agmr_jax import checkpointing


def _manager(name, steps, best=None):
  return types.SimpleNamespace(
      name=name, all_steps=lambda: list(steps), latest_step=lambda: max(steps, default=None),
      best_step=lambda: best)


def _ckpt(latest_steps, best_steps=(), best=None):
  return types.SimpleNamespace(latest=_manager('latest', latest_steps),
                               best=_manager('best', best_steps, best))


@pytest.mark.parametrize('value, parsed', [('best', 'best'), ('latest', 'latest'), ('0', 0),
                                           (12, 12), ('300', 300)])
def test_parse_checkpoint(value, parsed):
  assert checkpointing.parse_checkpoint(value) == parsed


@pytest.mark.parametrize('value', ['-1', 'bogus', None, '1.5', 'Best'])
def test_parse_checkpoint_refuses(value):
  with pytest.raises(ValueError, match='^' + re.escape(
      f"checkpoint must be 'best', 'latest' or a step number, got {value!r}") + '$'):
    checkpointing.parse_checkpoint(value)


def test_best_latest_and_steps_come_from_their_manager(caplog):
  ckpt = _ckpt([4, 8, 12], [8], best=8)
  manager, step = checkpointing.choose_checkpoint(ckpt, 'run', 'best')
  assert (manager.name, step) == ('best', 8)
  manager, step = checkpointing.choose_checkpoint(ckpt, 'run', 'latest')
  assert (manager.name, step) == ('latest', 12)
  assert checkpointing.choose_checkpoint(ckpt, 'run', 4)[0].name == 'latest'
  assert checkpointing.choose_checkpoint(ckpt, 'run', 12)[1] == 12
  ckpt = _ckpt([12], [8], best=8)  # a best step the latest manager no longer keeps
  manager, step = checkpointing.choose_checkpoint(ckpt, 'run', 8)
  assert (manager.name, step) == ('best', 8)
  assert 'no best checkpoint' not in caplog.text


def test_best_falls_back_to_the_latest_with_a_warning(caplog):
  caplog.set_level(logging.WARNING)
  manager, step = checkpointing.choose_checkpoint(_ckpt([3, 6]), 'run', 'best')
  assert (manager.name, step) == ('latest', 6)
  assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
      'run has no best checkpoint (no validation split?): using the latest']


@pytest.mark.parametrize('which', ['best', 'latest'])
def test_no_checkpoint_at_all(which):
  with pytest.raises(FileNotFoundError, match='^run: no checkpoint to restore$'):
    checkpointing.choose_checkpoint(_ckpt([]), 'run', which)


def test_a_step_not_kept_names_the_kept_ones():
  with pytest.raises(FileNotFoundError,
                     match=re.escape('run: no checkpoint at step 5 (kept: [4, 8, 12])') + '$'):
    checkpointing.choose_checkpoint(_ckpt([4, 12], [8], best=8), 'run', 5)
  with pytest.raises(FileNotFoundError, match=re.escape('(kept: none)') + '$'):
    checkpointing.choose_checkpoint(_ckpt([]), 'run', 5)
