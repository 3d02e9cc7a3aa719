"""Per-case progress: a bar rewriting itself on a terminal, log lines otherwise."""

import io
import re

from absl import logging

from agmr_jax import progress


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_terminal_bar_rewrites_one_line_and_ends_with_a_newline():
  out = _Terminal()
  bar = progress.Cases(2, 'predict', stream=out)
  bar.step('case_a', '12 lesion voxels')
  bar.step('case_b')
  text = out.getvalue()
  assert text.count('\r') == 2 and text.endswith('\n') and text.count('\n') == 1
  assert re.search(r'predict \|#{10}\.{10}\| \[1/2\] case_a: 12 lesion voxels, elapsed '
                   r'0:00:\d\d, ETA 0:00:\d\d', text)
  assert '|' + '#' * 20 + '| [2/2] case_b, elapsed' in text


def test_without_a_terminal_each_case_is_a_log_line(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, 'info', lambda fmt, *args: lines.append(fmt % args))
  bar = progress.Cases(3, 'evaluate', stream=io.StringIO())
  bar.step('c1', 'DSC 0.5000')
  assert lines == [lines[0]] and lines[0].startswith('evaluate [1/3] c1: DSC 0.5000, elapsed ')
  assert '|' not in lines[0]


def test_format_eta():
  assert progress.format_eta(3725.9) == '1:02:05'
