"""What the absl command-line entry points (evaluate, predict, crossval) share.

Each `main(argv)` is `cli.run(argv, lambda flags: ...)`: positional arguments are refused (exit
status 2), library INFO logging is quietened, and an expected problem with the user's input or
files becomes one `error: ...` line on stderr and exit status 1 instead of a traceback. The
messages name the file themselves (DataError, FileNotFoundError and FileExistsError do).
"""

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from absl import flags

from agmr_jax import logs
from input_pipeline.errors import DataError

T = TypeVar('T')

# Problems a user can fix (bad or missing files, existing outputs, bad flag values).
USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError, FileNotFoundError, FileExistsError, ValueError, KeyError)


def run(argv: Sequence[str], command: Callable[[Any], T],
        errors: tuple[type[BaseException], ...] = USER_ERRORS) -> T:
  """Returns command(flags.FLAGS); exits 2 on positional arguments and 1 on one of `errors`."""
  if len(argv) > 1:
    print(f'error: unexpected arguments {list(argv[1:])}', file=sys.stderr)
    sys.exit(2)
  logs.quiet_libraries()
  try:
    return command(flags.FLAGS)
  except errors as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
