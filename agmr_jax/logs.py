"""Keeps the run log readable: library INFO chatter (Orbax, TFDS) is dropped, warnings kept."""

import logging as py_logging

_QUIET = ('/orbax/', '/tensorflow_datasets/', '/etils/', '/grain/')


class _QuietLibraries(py_logging.Filter):

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _QUIET)


def quiet_libraries() -> None:
  """Installs the filter on the 'absl' logger every library logs through (idempotent)."""
  logger = py_logging.getLogger('absl')
  if not any(isinstance(f, _QuietLibraries) for f in logger.filters):
    logger.addFilter(_QuietLibraries())
