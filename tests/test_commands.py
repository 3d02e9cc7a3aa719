"""Commands run in-process through their main(argv) for success: the files they promise, exit 0,
an idempotent re-run (the refusals of each command are tested beside its library)."""

import json
import pathlib
import re

import numpy as np
import pytest

from agmr_jax import compare as compare_command
from agmr_jax import main as train_command
from agmr_jax import runs
from agmr_jax.evaluation import report
from input_pipeline import build as build_command
from tests.test_crossval_compare import _row
from tests.test_crossval_compare import _write_eval


def test_train_main_writes_the_run_and_a_rerun_only_re_evaluates(tiny_built, data_dir, tmp_path,
                                                                  capsys, caplog):
  del tiny_built
  workdir = tmp_path / 'run'
  argv = ['--config=configs/unet.py:tiny', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', '--config.model_kwargs.features=(4,8,16)',
          '--config.num_train_steps=3', '--config.eval_every_steps=3']
  assert train_command.main(argv) == 0
  for name in (runs.CONFIG, runs.RECIPE, runs.METRICS, runs.POSTPROCESS):
    assert (workdir / name).is_file(), name
  assert runs.status(workdir, runs.load_config(workdir)) == 'finished'
  first = report.read_cases(runs.eval_dir(workdir))
  assert 'test: mean per-case DSC' in capsys.readouterr().out
  steps = [r['step'] for r in runs.read_metrics(workdir) if 'train/loss' in r]
  caplog.clear()
  assert train_command.main(argv) == 0  # Finished: resumes at the last step, evaluates again.
  # ... with the network compiled by the first run loaded from the persistent cache.
  loaded = re.search(r'compilation cache \S+: (\d+) program\(s\) loaded from it', caplog.text)
  assert loaded and int(loaded.group(1)) >= 1, caplog.text[-2000:]
  assert [r['step'] for r in runs.read_metrics(workdir) if 'train/loss' in r] == steps
  assert report.read_cases(runs.eval_dir(workdir)) == first


def test_build_main_builds_records_once(tmp_path, capsys):
  argv = ['--dataset=synthetic_tiny', '--recipe=tiny_2p5d', f'--data_dir={tmp_path}',
          '--num_subjects=5']
  assert build_command.main(argv) == 0
  path = capsys.readouterr().out.strip().splitlines()[-1]
  meta = json.loads((tmp_path / path.partition(str(tmp_path) + '/')[2] / 'slices_meta.json')
                    .read_text()) if path.startswith(str(tmp_path)) else None
  assert meta is not None and len(meta['cases']) == 5
  assert build_command.main(argv) == 0  # Built already: only the path again.
  assert capsys.readouterr().out.strip().splitlines()[-1] == path
  with pytest.raises(SystemExit) as exit_info:
    build_command.main(['--dataset=synthetic_nope', '--recipe=tiny_2p5d',
                        f'--data_dir={tmp_path}'])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.startswith('error: ')


def test_build_codec_changes_the_files_not_the_records(tmp_path, capsys):
  """--codec=zstd writes smaller files holding the same records under the same name as the
  default (uncompressed) build; training reads both alike."""
  from input_pipeline import builder  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  built = {}
  for codec in ('zstd', 'none'):
    argv = ['--dataset=synthetic_tiny', '--recipe=tiny_2p5d', f'--data_dir={tmp_path / codec}',
            '--num_subjects=5'] + (['--codec=zstd'] if codec == 'zstd' else [])  # none: default
    assert build_command.main(argv) == 0
    built[codec] = pathlib.Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert builder.codec_of(built[codec]) == codec
  assert built['zstd'].relative_to(tmp_path / 'zstd') == built['none'].relative_to(tmp_path / 'none')
  size = {c: sum(f.stat().st_size for f in p.glob('*.array_record-*')) for c, p in built.items()}
  assert size['zstd'] < size['none']
  reads = {c: pipeline.SliceDataset(p).train_records(range(5)) for c, p in built.items()}
  everything = list(range(len(reads['none'])))
  for key in ('image', 'mask'):
    np.testing.assert_array_equal(reads['zstd'].read_batch(everything)[key],
                                  reads['none'].read_batch(everything)[key])


def test_compare_main_writes_its_three_files_and_refuses_to_replace_them(tmp_path, capsys):
  for name, dsc in (('A', [0.8, 0.7, 0.6]), ('B', [0.7, 0.6, 0.4])):
    _write_eval(tmp_path / name, [_row(f'p{i}', d) for i, d in enumerate(dsc)])
  argv = [f'--runs={tmp_path / "A"},{tmp_path / "B"}', f'--reference={tmp_path / "A"}',
          f'--out={tmp_path / "table"}']
  assert compare_command.main(argv) == 0
  assert '| A (reference) |' in capsys.readouterr().out
  for suffix in ('.md', '.csv', '_dsc_boxplot.png'):
    assert (tmp_path / f'table{suffix}').is_file()
  before = (tmp_path / 'table.md').read_text()
  with pytest.raises(SystemExit) as exit_info:
    compare_command.main(argv)
  assert exit_info.value.code == 1
  assert 'exists; pass --overwrite' in capsys.readouterr().err
  assert compare_command.main([*argv, '--overwrite']) == 0
  assert (tmp_path / 'table.md').read_text() == before


def test_refusals_name_the_option_or_file(tmp_path, capsys, tiny_recipe):
  """Messages that used to say nothing of where: fold numbers, a corrupt cases.csv, too few
  cases for the folds."""
  from agmr_jax import crossval as crossval_command  # pylint: disable=g-import-not-at-top
  from input_pipeline import datasets  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  from input_pipeline.errors import DataError  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as exit_info:
    crossval_command.main(['--config=configs/unet.py:tiny', f'--workdir_root={tmp_path}',
                           '--folds=a'])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == 'error: --folds takes fold numbers such as 0,1,2; got a\n'
  _write_eval(tmp_path / 'A', [_row('p0', 0.5)])
  cases = tmp_path / 'A' / 'eval' / 'test' / 'cases.csv'
  cases.write_text(cases.read_text().replace('0.5,', 'abc,', 1))
  with pytest.raises(DataError, match=rf"{cases}: line 2, column 'dsc': 'abc' is not a number"):
    report.read_cases(cases.parent)
  raw = tmp_path / 'raw'
  synthetic.write_dataset('synthetic_tiny', raw, 3)
  with pytest.raises(DataError, match=rf'{raw}: 3 case\(s\) cannot fill 5 patient-level folds'):
    datasets.prepare('nnunet', tiny_recipe, data_dir=tmp_path / 'data', manual_dir=raw)


def test_debug_shows_the_traceback_instead_of_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match='run folder does not exist'):
    from agmr_jax import evaluate as evaluate_command  # pylint: disable=g-import-not-at-top
    evaluate_command.main([f'--workdir={tmp_path / "nope"}', '--debug'])


def test_compilation_cache_folder_beside_the_run(tmp_path):
  from agmr_jax import compile_cache  # pylint: disable=g-import-not-at-top
  assert compile_cache.resolve('auto', tmp_path / 'sweep' / 'lr=0.1') == (
      tmp_path / 'sweep' / '.jax_cache').resolve()
  assert compile_cache.resolve('none', tmp_path / 'run') is None
  assert compile_cache.resolve(str(tmp_path / 'c'), tmp_path / 'run') == (tmp_path / 'c').resolve()
