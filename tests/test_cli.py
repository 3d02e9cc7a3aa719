"""agmr_jax.cli: the one command-line convention (exit statuses, one-line errors, old spellings)."""

from absl import flags
import pytest

from agmr_jax import cli
from input_pipeline.errors import DataError


def _command_flags():
  fv = cli.new_flags()
  flags.DEFINE_string('workdir', None, 'w', flag_values=fv, required=True)
  flags.DEFINE_string('out', None, 'o', flag_values=fv)
  flags.DEFINE_bool('tta', False, 't', flag_values=fv)
  cli.deprecated_alias(fv, 'output', 'out')
  cli.deprecated_alias(fv, 'flip_tta', 'tta')
  cli.require(fv, 'out')
  return fv


def _never(flag_values):
  raise AssertionError(f'the command must not run ({flag_values})')


def test_runs_the_command_with_the_parsed_flags():
  fv = _command_flags()
  seen = []
  assert cli.run(fv, ['--workdir', 'w', '--out=o', '--tta'],
                 lambda f: seen.append((f.workdir, f.out, f.tta))) == 0
  assert seen == [('w', 'o', True)]
  # A second call sees only its own arguments, not the first call's values.
  assert cli.run(fv, ['--workdir=v', '--out=p'], lambda f: seen.append((f.workdir, f.tta))) == 0
  assert seen[-1] == ('v', False)
  assert cli.run(fv, ['--workdir=v', '--out=p'], lambda f: 75) == 75


@pytest.mark.parametrize('argv, message', [
    (['--out=o'], 'Flag --workdir must have a value'),
    (['--workdir=w'], '--out must be given'),
    (['--workdir=w', '--out=o', 'stray'], "unexpected arguments ['stray']"),
    (['--workdir=w', '--out=o', '--no_such_flag=1'], 'no_such_flag'),
])
def test_usage_errors_exit_2_with_one_line(capsys, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    cli.run(_command_flags(), argv, _never)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and message in err.splitlines()[0]


def test_old_spellings_work_with_a_notice(capsys):
  seen = []
  cli.run(_command_flags(), ['--workdir=w', '--output=o', '--flip_tta'],
          lambda f: seen.append((f.out, f.tta)))
  assert seen == [('o', True)]
  assert capsys.readouterr().err.splitlines() == [
      'note: --output is deprecated; use --out', 'note: --flip_tta is deprecated; use --tta']


@pytest.mark.parametrize('error', [
    DataError('/data/in/case_0001.nii.gz', 'expected a 3D volume, got 4D shape (8, 8, 4, 2)'),
    FileExistsError('/out/case.nii.gz: exists; pass --overwrite to replace it'),
    FileNotFoundError('/runs/x: run folder does not exist'),
    ValueError('/runs/x/config.json: /runs/x holds a run started with another config'),
])
def test_user_errors_become_one_line_and_exit_1(capsys, error):
  def command(f):
    del f
    raise error

  with pytest.raises(SystemExit) as exit_info:
    cli.run(_command_flags(), ['--workdir=w', '--out=o'], command)
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == f'error: {error}\n'


def test_other_errors_keep_their_traceback_unless_listed(capsys):
  def command(f):
    del f
    raise RuntimeError('fold 2 stopped early')

  with pytest.raises(RuntimeError, match='fold 2'):
    cli.run(_command_flags(), ['--workdir=w', '--out=o'], command)
  with pytest.raises(SystemExit) as exit_info:
    cli.run(_command_flags(), ['--workdir=w', '--out=o'], command,
            errors=cli.USER_ERRORS + (RuntimeError,))
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == 'error: fold 2 stopped early\n'


def test_passthrough_hands_unknown_flags_to_the_command():
  fv = cli.new_flags()
  flags.DEFINE_string('config', None, 'c', flag_values=fv)
  seen = []
  cli.run(fv, ['--config=c.py', '--config.batch_size=16', '--config.seed=2'],
          lambda f, extra: seen.append((f.config, extra)), passthrough=True)
  assert seen == [('c.py', ['--config.batch_size=16', '--config.seed=2'])]


@pytest.mark.parametrize('argv', [
    ['--workdir=a', '--workdir', 'b', '--out=o'],
    ['--workdir=a', '--out=o', '--tta', '--notta'],
    ['--workdir=a', '--out=o', '--output=p'],  # an old spelling counts as the same option
])
def test_a_single_valued_option_given_twice_is_a_usage_error(capsys, argv):
  with pytest.raises(SystemExit) as exit_info:
    cli.run(_command_flags(), argv, _never)
  assert exit_info.value.code == 2
  assert 'given more than once' in capsys.readouterr().err.splitlines()[0]


def test_repeatable_options_may_repeat():
  fv = cli.new_flags()
  flags.DEFINE_multi_string('set', None, 's', flag_values=fv)
  seen = []
  cli.run(fv, ['--set', 'a=1', '--set=b=2'], lambda f: seen.append(f.set))
  assert seen == [['a=1', 'b=2']]


def test_a_failed_parse_leaves_nothing_for_the_next_call(capsys):
  fv = cli.new_flags()
  flags.DEFINE_multi_string('workdir', None, 'w', flag_values=fv)
  flags.DEFINE_integer('batch_size', None, 'b', lower_bound=1, flag_values=fv)
  with pytest.raises(SystemExit):
    cli.run(fv, ['--workdir=a', '--workdir=b', '--batch_size=0'], _never)
  capsys.readouterr()
  seen = []
  cli.run(fv, ['--workdir=c'], lambda f: seen.append((f.workdir, f.batch_size)))
  assert seen == [(['c'], None)]
