"""Progress of long loops: steps/s and ETA for training, a per-case bar for prediction and
evaluation (one self-overwriting line on a terminal, plain log lines otherwise)."""

import sys
import time

from absl import logging


def format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


class StepRate:
  """Steps/s and ETA over the window since the last call."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def rate(self, step: int) -> tuple[float, float]:
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total - step) / max(rate, 1e-9)
    return rate, eta


class Cases:
  """`[i/n] name: detail, elapsed H:MM:SS, ETA H:MM:SS` after each case.

  On a terminal (`stream.isatty()`) the line rewrites itself as a bar; otherwise each case is one
  INFO log line, so batch logs stay readable.
  """

  def __init__(self, total: int, label: str, stream=None):
    self.total, self.label = total, label
    self.stream = sys.stderr if stream is None else stream
    self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.done = 0
    self._start = time.perf_counter()

  def line(self, name: str, detail: str = '') -> str:
    elapsed = time.perf_counter() - self._start
    eta = elapsed / max(self.done, 1) * (self.total - self.done)
    width = 20
    filled = int(width * self.done / max(self.total, 1))
    bar = f'|{"#" * filled}{"." * (width - filled)}| ' if self.tty else ''
    return (f'{self.label} {bar}[{self.done}/{self.total}] {name}'
            + (f': {detail}' if detail else '')
            + f', elapsed {format_eta(elapsed)}, ETA {format_eta(eta)}')

  def step(self, name: str, detail: str = '') -> None:
    self.done += 1
    text = self.line(name, detail)
    if self.tty:
      end = '\n' if self.done == self.total else ''
      self.stream.write('\r\x1b[2K' + text + end)
      self.stream.flush()
    else:
      logging.info('%s', text)
