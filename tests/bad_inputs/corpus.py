"""The bad-input cases (see the package docstring) and the helpers that write them."""


import dataclasses
import pathlib
import shutil
from collections.abc import Callable

from tests.bad_inputs import files

COMMANDS = {
    'train': 'agmr_jax.main', 'evaluate': 'agmr_jax.evaluate', 'predict': 'agmr_jax.predict',
    'compare': 'agmr_jax.compare', 'crossval': 'agmr_jax.crossval', 'sweep': 'launch.sweep',
    'build': 'input_pipeline.build', 'evaluate-folder': 'agmr_jax.evaluate_folder',
}


@dataclasses.dataclass(frozen=True)
class Env:
  """What a case may use: its own empty folder, a trained tiny run (read-only), the NIfTI tree
  behind it (nnU-Net layout, read-only) and a data_dir holding its records."""
  tmp: pathlib.Path
  run: pathlib.Path
  raw: pathlib.Path
  data_dir: pathlib.Path

  @property
  def scan(self) -> pathlib.Path:
    return sorted((self.raw / 'imagesTr').glob('*_0000.nii.gz'))[0]

  @property
  def label(self) -> pathlib.Path:
    return sorted((self.raw / 'labelsTr').glob('*.nii.gz'))[0]


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  command: str
  make: Callable[[Env], list[str]]  # writes its inputs, returns argv
  status: int  # 1: a user error, 2: a usage error
  named: Callable[[Env], str]  # what the one line must name: the option, the file, the value


def _train(env: Env, *overrides: str, config: str = 'configs/unet.py:tiny',
           workdir: pathlib.Path | None = None) -> list[str]:
  return [f'--config={config}', f'--workdir={workdir or env.tmp / "run"}',
          f'--config.data.data_dir={env.data_dir}', *overrides]


def _copy_run(env: Env) -> pathlib.Path:
  copy = env.tmp / 'run'
  shutil.copytree(env.run, copy, ignore=shutil.ignore_patterns('eval'))
  return copy


def _predict(env: Env, *extra: str, scan=None) -> list[str]:
  inputs = env.tmp / 'in'
  if scan is None:
    files.good_scan(inputs, env.scan)
  else:
    scan(inputs, env.scan)
  return ['-i', str(inputs), '-o', str(env.tmp / 'out'), f'--workdir={env.run}', *extra]


def _sweep_config(env: Env, body: str) -> list[str]:
  path = env.tmp / 'sweep_config.py'
  path.write_text('from configs import unet\n\n\ndef get_config(arg=None):\n'
                  '  return unet.get_config(",".join(["tiny", *([arg] if arg else [])]))\n\n\n'
                  + body)
  return [f'--config={path}', f'--workdir_root={env.tmp / "sweep"}', '--run=none']


def _bad_config_json(env: Env) -> list[str]:
  copy = _copy_run(env)
  (copy / 'config.json').write_text('{"model": "unet",')
  return [f'--workdir={copy}']


def _existing_output(env: Env) -> list[str]:
  argv = _predict(env)
  (env.tmp / 'out').mkdir()
  (env.tmp / 'out' / 'ok.nii.gz').write_bytes(b'a mask the user keeps')
  return argv


def _folder_pair(env: Env, shape=None) -> list[str]:
  files.mask_like(env.tmp / 'gt', env.label, 'case.nii.gz')
  files.mask_like(env.tmp / 'pred', env.label, 'case.nii.gz', shape=shape)
  return ['--pred', str(env.tmp / 'pred'), '--gt', str(env.tmp / 'gt'), '--out',
          str(env.tmp / 'report')]


def _nnunet_with(env: Env, bad: str) -> list[str]:
  raw = env.tmp / 'raw'
  shutil.copytree(env.raw, raw)
  victim = sorted((raw / 'imagesTr').glob('*_0000.nii.gz'))[1]
  victim.unlink()
  files.BAD_SCANS[bad](raw / 'imagesTr', env.scan).rename(victim)
  return ['--dataset=nnunet', '--recipe=tiny_2p5d', f'--manual_dir={raw}',
          f'--data_dir={env.tmp / "data"}']


def _text(value: str) -> Callable[[Env], str]:
  return lambda env: value


def _path(relative: str) -> Callable[[Env], str]:
  return lambda env: str(env.tmp / relative)



_TRAIN = [
    Case('misspelled config key', 'train', lambda e: _train(e, '--config.batch_sizee=2'), 2,
         _text('batch_sizee')),
    Case('missing config file', 'train', lambda e: _train(e, config='configs/nope.py'), 2,
         _text('configs/nope.py')),
    Case('unknown config variant', 'train', lambda e: _train(e, config='configs/unet.py:bogus'),
         2, _text('bogus')),
    Case('unknown model', 'train', lambda e: _train(e, '--config.model=unett'), 1,
         _text('unett')),
    Case('test fold out of range', 'train', lambda e: _train(e, '--config.data.test_fold=7'), 1,
         _text('data.test_fold')),
    Case('zero batch size', 'train', lambda e: _train(e, '--config.batch_size=0'), 1,
         _text('batch_size')),
    Case('negative eval batch size', 'train',
         lambda e: _train(e, '--config.eval_batch_size=-8'), 1, _text('eval_batch_size')),
    Case('no step to train', 'train',
         lambda e: _train(e, '--config.num_train_steps=0', '--config.num_epochs=0'), 1,
         _text('num_train_steps')),
    Case('one fold', 'train', lambda e: _train(e, '--config.data.num_folds=1'), 1,
         _text('data.num_folds')),
    Case('no read thread', 'train', lambda e: _train(e, '--config.data.read_threads=0'), 1,
         _text('data.read_threads')),
    Case('workdir is a file', 'train',
         lambda e: (e.tmp / 'afile').write_text('x') and _train(e, workdir=e.tmp / 'afile'), 1,
         _path('afile')),
    Case('data_dir is a file', 'train',
         lambda e: (e.tmp / 'afile').write_text('x') and _train(
             e, f'--config.data.data_dir={e.tmp / "afile"}'), 1, _path('afile')),
    Case('resume under another config', 'train',
         lambda e: _train(e, '--config.seed=1', workdir=_copy_run(e)), 1, _path('run/config.json')),
    Case('workdir given twice', 'train', lambda e: _train(e, f'--workdir={e.tmp}/b'), 2,
         _text('--workdir')),
]

_PREDICT = [
    Case('negative batch size', 'predict', lambda e: _predict(e, '--batch_size=-4'), 2,
         _text('--batch_size')),
    Case('zero batch size', 'predict', lambda e: _predict(e, '--batch_size=0'), 2,
         _text('--batch_size')),
    *[Case(f'{bad} scan', 'predict', lambda e, bad=bad: _predict(e, scan=files.BAD_SCANS[bad]), 1,
           lambda e, bad=bad: str(next((e.tmp / 'in').iterdir())))
      for bad in files.BAD_SCANS],
    Case('missing input', 'predict',
         lambda e: ['-i', str(e.tmp / 'nope'), '-o', str(e.tmp / 'out'), f'--workdir={e.run}'], 1,
         _path('nope')),
    Case('workdir is not a run', 'predict',
         lambda e: [*_predict(e)[:4], f'--workdir={e.tmp}'], 1, _path('config.json')),
    Case('unknown checkpoint', 'predict', lambda e: _predict(e, '--checkpoint=bogus'), 1,
         _text('bogus')),
    Case('threshold outside (0, 1)', 'predict', lambda e: _predict(e, '--threshold=1.5'), 1,
         _text('threshold')),
    Case('outputs exist', 'predict', _existing_output, 1, _path('out/ok.nii.gz')),
]

_OTHERS = [
    Case('missing workdir', 'evaluate', lambda e: [f'--workdir={e.tmp / "nope"}'], 1,
         _path('nope')),
    Case('unknown split', 'evaluate', lambda e: [f'--workdir={e.run}', '--split=bogus'], 1,
         _text('bogus')),
    Case('checkpoint step not saved', 'evaluate',
         lambda e: [f'--workdir={e.run}', '--checkpoint=999'], 1, _text('999')),
    Case('corrupt config.json', 'evaluate', _bad_config_json, 1, _path('run/config.json')),
    Case('run not evaluated', 'compare',
         lambda e: ['--runs', f'{e.run},{e.tmp / "nope"}', f'--reference={e.run}', '--out',
                    str(e.tmp / 'table')], 1,
         _path('nope')),
    Case('unknown metric', 'compare',
         lambda e: ['--runs', f'{e.run},{e.run}', f'--reference={e.run}', '--metrics=bogus',
                    '--out', str(e.tmp / 'table')], 1, _text('bogus')),
    Case('override value of the wrong type', 'crossval',
         lambda e: ['--config=configs/unet.py:tiny', f'--workdir_root={e.tmp / "cv"}',
                    '--set=batch_size=abc'], 1, _text('batch_size')),
    Case('override of an unknown key', 'crossval',
         lambda e: ['--config=configs/unet.py:tiny', f'--workdir_root={e.tmp / "cv"}',
                    '--set=batch_sizee=2'], 1, _text('batch_sizee')),
    Case('fold out of range', 'crossval',
         lambda e: ['--config=configs/unet.py:tiny', f'--workdir_root={e.tmp / "cv"}',
                    '--folds=9'], 1, _text('9')),
    Case('config without get_sweep', 'sweep', lambda e: _sweep_config(e, ''), 1,
         _path('sweep_config.py')),
    Case('sweep of an unknown key', 'sweep',
         lambda e: _sweep_config(e, 'def get_sweep(arg=None):\n  return [{"batch_sizee": 2}]\n'),
         1, _text('batch_sizee')),
    Case('sweep that is not a list of points', 'sweep',
         lambda e: _sweep_config(e, 'def get_sweep(arg=None):\n  return 3\n'), 1,
         _path('sweep_config.py')),
    Case('size not a number', 'build',
         lambda e: ['--dataset=synthetic_tiny', '--recipe=tiny_2p5d', '--size=abc',
                    f'--data_dir={e.tmp / "data"}'], 2, _text('--size')),
    Case('zero size', 'build',
         lambda e: ['--dataset=synthetic_tiny', '--recipe=tiny_2p5d', '--size=0,0',
                    f'--data_dir={e.tmp / "data"}'], 2, _text('--size')),
    Case('zero folds', 'build',
         lambda e: ['--dataset=synthetic_tiny', '--recipe=tiny_2p5d', '--num_folds=0',
                    f'--data_dir={e.tmp / "data"}'], 2, _text('--num_folds')),
    Case('missing manual_dir', 'build',
         lambda e: ['--dataset=nnunet', '--recipe=tiny_2p5d', f'--manual_dir={e.tmp / "nope"}',
                    f'--data_dir={e.tmp / "data"}'], 1, _path('nope')),
    Case('unknown dataset', 'build',
         lambda e: ['--dataset=bogus', '--recipe=tiny_2p5d', f'--data_dir={e.tmp / "data"}'], 1,
         _text('bogus')),
    *[Case(f'{bad} scan in the dataset', 'build', lambda e, bad=bad: _nnunet_with(e, bad), 1,
           lambda e: str(sorted((e.tmp / 'raw' / 'imagesTr').glob('*_0000.nii.gz'))[1].name))
      for bad in ('truncated', 'nan', 'zero_pixdim')],
    Case('missing prediction folder', 'evaluate-folder',
         lambda e: ['--pred', str(e.tmp / 'nope'), '--gt', str(e.raw / 'labelsTr'), '--out',
                    str(e.tmp / 'report')], 1, _path('nope')),
    Case('prediction of another shape', 'evaluate-folder', lambda e: _folder_pair(e, (5, 5, 5)),
         1, _path('pred/case.nii.gz')),
]

CASES = {f'{c.command}: {c.name}': c for c in _TRAIN + _PREDICT + _OTHERS}
