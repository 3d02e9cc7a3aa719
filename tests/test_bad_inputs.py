"""Every command on every bad input of the corpus (tests/bad_inputs): the documented exit status,
one `error:` line naming the option or file, no traceback, and nothing a user has changed."""

import importlib
import pathlib

import pytest

from tests.bad_inputs import corpus
from tests.test_evaluate import REPO
from tests.test_evaluate import trained_run


@pytest.fixture(scope='module')
def shared(tiny_built, tiny_raw, data_dir):
  del tiny_built
  workdir, _ = trained_run(data_dir)
  return workdir, tiny_raw, data_dir


def snapshot(*roots: pathlib.Path) -> dict:
  """Every file and folder under roots, with size and modification time."""
  entries = {}
  for root in roots:
    for path in [root, *root.rglob('*')] if root.exists() else []:
      stat = path.lstat()
      entries[str(path)] = (path.is_dir(), stat.st_size if path.is_file() else 0,
                            stat.st_mtime_ns if path.is_file() else 0)
  return entries


@pytest.mark.parametrize('name', sorted(corpus.CASES))
def test_bad_input(name, shared, tmp_path, capsys, monkeypatch):
  case = corpus.CASES[name]
  workdir, raw, data_dir = shared
  monkeypatch.chdir(REPO)
  env = corpus.Env(tmp=tmp_path, run=workdir, raw=raw, data_dir=data_dir)
  argv = case.make(env)
  before = snapshot(tmp_path, workdir, raw)
  main = importlib.import_module(corpus.COMMANDS[case.command]).main
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  out, err = capsys.readouterr()
  assert 'Traceback' not in out + err
  lines = [line for line in err.splitlines() if line.startswith('error:')]
  assert len(lines) == 1, err
  assert case.named(env) in lines[0]
  assert exit_info.value.code == case.status, lines[0]
  assert snapshot(tmp_path, workdir, raw) == before
