"""The persistent XLA compilation cache: a network compiled once is loaded, not compiled again,
by every later run of the same program on the same backend (sweep points, crossval folds, study
entries, evaluation and prediction of a run).

On by default in `{workdir}/../.jax_cache`, beside the runs under one root (a sweep's points, a
cross-validation's folds, runs/), so neighbouring runs share it; `--compilation_cache=DIR` puts it
elsewhere and `--compilation_cache=none` turns it off. A cache dir set before (JAX's own
JAX_COMPILATION_CACHE_DIR, or a test session's) is kept. Programs that compile in under
jax_persistent_cache_min_compile_time_secs (JAX's default: 1 s) are not stored. After a command,
the log says how many programs were loaded from the cache and how many compiled.
"""

import pathlib

from absl import logging

NAME = '.jax_cache'
OFF = ('none', 'off', '')
_counts = {'/jax/compilation_cache/cache_hits': 0, '/jax/compilation_cache/cache_misses': 0}
_listening = []
_since = {}


def resolve(flag: str, workdir) -> pathlib.Path | None:
  """The cache folder for --compilation_cache=`flag` ('auto': beside `workdir`), or None (off)."""
  if flag.lower() in OFF:
    return None
  if flag == 'auto':
    return pathlib.Path(workdir).resolve().parent / NAME
  return pathlib.Path(flag).resolve()


def _count(event: str, **kwargs) -> None:
  del kwargs
  if event in _counts:
    _counts[event] += 1


def enable(folder: pathlib.Path | None) -> str | None:
  """Turns the cache on in `folder` unless one is set already; returns the folder in use."""
  import jax  # pylint: disable=g-import-not-at-top  (after the XLA flags)
  if not _listening:
    jax.monitoring.register_event_listener(_count)
    _listening.append(True)
  _since.update(_counts)
  current = jax.config.jax_compilation_cache_dir
  if current or folder is None:
    return current or None
  jax.config.update('jax_compilation_cache_dir', str(folder))
  return str(folder)


def counts() -> tuple[int, int]:
  """(programs loaded from the cache, programs compiled and looked up) since the last enable()."""
  return tuple(_counts[k] - _since.get(k, 0) for k in ('/jax/compilation_cache/cache_hits',
                                                       '/jax/compilation_cache/cache_misses'))


def log_counts(folder: str | None) -> None:
  if folder:
    hits, misses = counts()
    logging.info('compilation cache %s: %d program(s) loaded from it, %d compiled', folder, hits,
                 misses)
