"""agmr_jax.cli: the shared main of evaluate / predict / crossval (exit codes, one-line errors)."""

import pytest

from agmr_jax import cli
from input_pipeline.errors import DataError


def _never(flags):
  raise AssertionError(f'the command must not run ({flags})')


def test_returns_what_the_command_returns():
  assert cli.run(['prog'], lambda flags: ('ran', flags is not None)) == ('ran', True)


def test_positional_arguments_exit_2_before_the_command(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.run(['prog', 'stray', 'args'], _never)
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: unexpected arguments ['stray', 'args']\n"


@pytest.mark.parametrize('error', [
    DataError('/data/in/case_0001.nii.gz', 'expected a 3D volume, got 4D shape (8, 8, 4, 2)'),
    FileExistsError('/out/case.nii.gz: exists; pass --overwrite to replace it'),
    FileNotFoundError('/runs/x: run folder does not exist'),
])
def test_user_errors_become_one_line_and_exit_1(capsys, error):
  def command(flags):
    del flags
    raise error

  with pytest.raises(SystemExit) as exit_info:
    cli.run(['prog'], command)
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == f'error: {error}\n'


def test_other_errors_keep_their_traceback_unless_listed(capsys):
  def command(flags):
    del flags
    raise RuntimeError('fold 2 stopped early')

  with pytest.raises(RuntimeError, match='fold 2'):
    cli.run(['prog'], command)
  with pytest.raises(SystemExit) as exit_info:
    cli.run(['prog'], command, errors=cli.USER_ERRORS + (RuntimeError,))
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == 'error: fold 2 stopped early\n'
