"""The one command-line convention every command follows.

A command module defines its flags at import on its own `FlagValues` (so several commands import
side by side, in a test or a console script) and a `main(argv=None) -> int` that calls `run`:

  FLAGS = cli.new_flags()
  flags.DEFINE_string('workdir', None, 'Training workdir.', flag_values=FLAGS, required=True)

  def main(argv=None):
    return cli.run(FLAGS, argv, lambda f: library_function(f.workdir))

`run` parses the argument list (the arguments alone, as argparse takes them; sys.argv[1:] when
None): a bad or missing flag
or a positional argument is one `error: ...` line and exit status 2; an expected problem with the
user's files or values (USER_ERRORS) is one `error: ...` line and status 1, never a traceback.
Old spellings stay accepted through `deprecated_alias`, with a one-line notice. The same option
means the same everywhere: --workdir, --out, --tta, --overwrite, --checkpoint.

SIGTERM (a scheduler's stop, `kill`) raises `Terminated` in the command, so every `finally` and
context manager runs (staging folders of predict, evaluate and build are removed, nothing
half-written is left), then exits 75 (runtime.EXIT_PREEMPTED: "run the same command again").
Training installs its own handler while it trains (it saves a checkpoint first).
"""

import contextlib
import pathlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags
from absl import logging

from agmr_jax import logs
from agmr_jax import runtime
from input_pipeline.errors import DataError

# Problems a user can fix (bad or missing files, existing outputs, bad flag values).
# OSError: an unwritable or full disk, a file where a folder should be (the message names it).
USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError, OSError, ValueError, KeyError)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class Terminated(BaseException):
  """SIGTERM arrived; a BaseException so that no `except Exception` of a command swallows it."""


def define_compilation_cache(flag_values: flags.FlagValues) -> None:
  """--compilation_cache for the commands that compile networks (agmr_jax/compile_cache.py)."""
  flags.DEFINE_string('compilation_cache', 'auto', "Persistent XLA compilation cache folder: "
                      "'auto' (.jax_cache beside the run's workdir, shared by the runs under one "
                      "root), a folder, or 'none'.", flag_values=flag_values)


def new_flags() -> flags.FlagValues:
  """A command's own flag registry (`--help` / `-h` print it; `--debug` shows tracebacks)."""
  flag_values = flags.FlagValues()
  flags.DEFINE_bool('debug', False, 'On an error, show the full traceback instead of one line.',
                    flag_values=flag_values)
  return flag_values


def deprecated_alias(flag_values: flags.FlagValues, old: str, new: str) -> None:
  """Accepts --old as a deprecated spelling of --new (same type; a notice names the new one)."""
  target = flag_values[new]
  flags.DEFINE_flag(flags.Flag(target.parser, target.serializer, old, None,
                               f'Deprecated spelling of --{new}.', boolean=target.boolean),
                    flag_values)
  flag_values.__dict__.setdefault('_deprecated', {})[old] = new


def require(flag_values: flags.FlagValues, *names: str) -> None:
  """Flags that must be given, checked after deprecated spellings are applied (usage error)."""
  flag_values.__dict__['_required'] = (*flag_values.__dict__.get('_required', ()), *names)


def _repeated(flag_values: flags.FlagValues, args: Sequence[str]) -> list[str]:
  """Single-valued flags given more than once (absl would silently keep the last)."""
  counts: dict[str, int] = {}
  aliases = flag_values.__dict__.get('_deprecated', {})
  for arg in args:
    if arg == '--':
      break
    if not arg.startswith('-') or arg == '-':
      continue
    name = arg.lstrip('-').partition('=')[0]
    if name not in flag_values and name.startswith('no') and name[2:] in flag_values:
      name = name[2:]
    if name in flag_values and not isinstance(flag_values[name], flags.MultiFlag):
      key = aliases.get(flag_values[name].name, flag_values[name].name)
      counts[key] = counts.get(key, 0) + 1
  return [f'--{name}' for name, n in counts.items() if n > 1]


def _check_config_files(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  """A config flag naming a missing file: one line (ml_collections' own message spans five)."""
  for name in [n for n in flag_values if hasattr(flag_values[n], '_sys_argv')]:
    for i, arg in enumerate(args):
      value = (arg.split('=', 1)[1] if arg.startswith(f'--{name}=') else
               args[i + 1] if arg == f'--{name}' and i + 1 < len(args) else None)
      path = pathlib.Path(value.split(':', 1)[0]) if value else None
      if path is not None and not path.is_file():
        print(f'error: --{name}={value}: {path} is not a file', file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _apply_aliases(flag_values: flags.FlagValues) -> None:
  for old, new in flag_values.__dict__.get('_deprecated', {}).items():
    if flag_values[old].present:
      print(f'note: --{old} is deprecated; use --{new}', file=sys.stderr)
      flag_values[new].value = flag_values[old].value
      flag_values[new].present = 1


def parse(flag_values: flags.FlagValues, argv: Sequence[str] | None, *,
          passthrough: bool = False) -> list[str]:
  """Parses argv into flag_values; usage errors exit 2 with one line.

  With `passthrough`, unknown `--flag=value` arguments are returned instead of refused (the
  sweep's --config.field=value overrides); otherwise [] is returned.
  """
  prog = pathlib.Path(sys.argv[0]).name if sys.argv and sys.argv[0] else 'agmr'
  argv = [prog, *(sys.argv[1:] if argv is None else argv)]
  if '--help' in argv[1:] or '-h' in argv[1:]:
    print(f'usage: {prog} [flags]\n{flag_values.get_help()}')
    sys.exit(EXIT_OK)
  for name in list(flag_values):
    # Defaults again, also after a parse that failed half-way: a call sees only its arguments.
    flag_values[name].unparse()
  for name in [n for n in flag_values if hasattr(flag_values[n], '_sys_argv')]:
    # ml_collections' config flag finds its --config.field=value overrides in the argument list
    # it was given (sys.argv by default): give it the list being parsed. It registers one flag
    # per override while parsing; an earlier call's are removed first.
    flag_values[name]._sys_argv = argv  # pylint: disable=protected-access
    for override in [n for n in flag_values if n.startswith(name + '.')]:
      delattr(flag_values, override)
  _check_config_files(flag_values, argv[1:])
  repeated = _repeated(flag_values, argv[1:])
  if repeated:
    print(f'error: {", ".join(repeated)} given more than once; give each once', file=sys.stderr)
    sys.exit(EXIT_USAGE)
  try:
    rest = flag_values(argv, known_only=passthrough)
    for name in [n for n in flag_values if hasattr(flag_values[n], '_sys_argv')]:
      _ = flag_values[name].value  # loads the config file: its errors are usage errors too
  except (flags.Error, AttributeError, OSError, ValueError, KeyError, TypeError) as e:
    # A config file that fails to load or an override of a field it lacks (ml_collections raises
    # these while parsing) is a usage error too.
    print(f'error: {usage_message(e)}\n(see {prog} --help)', file=sys.stderr)
    sys.exit(EXIT_USAGE)
  extra = [a for a in rest[1:] if passthrough and a.startswith('--')]
  if len(rest) > 1 + len(extra):
    print(f'error: unexpected arguments {[a for a in rest[1:] if a not in extra]}',
          file=sys.stderr)
    sys.exit(EXIT_USAGE)
  _apply_aliases(flag_values)
  missing = [f'--{n}' for n in flag_values.__dict__.get('_required', ())
             if flag_values[n].value is None]
  if missing:
    print(f'error: {", ".join(missing)} must be given\n(see {prog} --help)', file=sys.stderr)
    sys.exit(EXIT_USAGE)
  return extra


def usage_message(error: BaseException) -> str:
  """One line for a parse error: ml_collections embeds the config file's traceback in its
  message, and its own errors span lines; keep the flag, the file and the final message."""
  text = error
  while isinstance(text, BaseException) and text.args:  # AttributeError(KeyError('msg'))
    text = text.args[0]
  text = str(text)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if any(line.startswith('Traceback (most recent call last)') for line in lines):
    head = lines[0].removesuffix('Error whilst parsing config file:').strip()
    lines = [head, lines[-1]] if head else lines[-1:]
  if isinstance(error, AttributeError):
    lines[0] = f'the config has no field {lines[0]}'
  return ' '.join(lines).replace('Attempted [Relative path]:', 'tried')


def setup_logging() -> None:
  """absl's log format at INFO, library chatter quietened (what app.run would set up)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl's global flags.
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  logs.quiet_libraries()


def run(flag_values: flags.FlagValues, argv: Sequence[str] | None, command: Callable[..., Any],
        errors: tuple[type[BaseException], ...] = USER_ERRORS, *,
        passthrough: bool = False) -> int:
  """Parses argv and runs command(flag_values) (with `passthrough`: command(flag_values,
  extra_args)); returns the command's int status or 0, or exits 1 or 2 with one line."""
  extra = parse(flag_values, argv, passthrough=passthrough)
  setup_logging()
  try:
    with _sigterm_raises():
      status = command(flag_values, extra) if passthrough else command(flag_values)
  except errors as e:
    if flag_values['debug'].value:
      raise
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_ERROR)
  except Terminated:
    print('error: stopped by SIGTERM; nothing half-written was kept: run the same command again',
          file=sys.stderr)
    sys.exit(runtime.EXIT_PREEMPTED)
  return status if isinstance(status, int) else EXIT_OK


@contextlib.contextmanager
def _sigterm_raises():
  """SIGTERM -> Terminated while the command runs (main thread only; the previous handler is
  restored after). A handler installed inside (training's, jax.distributed's) takes precedence."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def stop(signum, frame):
    del signum, frame
    raise Terminated()

  previous = signal.signal(signal.SIGTERM, stop)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def entry(main: Callable[[Sequence[str] | None], int]) -> None:
  """`if __name__ == '__main__': cli.entry(main)`: exits with main's status."""
  sys.exit(main())
