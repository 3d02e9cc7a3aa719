r"""Patient-level k-fold cross-validation of one config (evaluation/crossval.py says how).

  agmr-crossval --config=configs/mdanet.py:dataset=synthetic_isles2018 \
      --workdir_root runs/mdanet_cv [--folds 0,1,2,3,4] [--set num_train_steps=600 ...]
  python -m agmr_jax.crossval ...   (the same command)

Trains and evaluates every unfinished fold in `{root}/fold={k}`, then writes and prints the
MDANet-style table (`{root}/crossval.md`, `crossval.csv`).
"""

import pathlib

from absl import flags

from agmr_jax import cli

FLAGS = cli.new_flags()
flags.DEFINE_string('config', None, 'Config file and variant: configs/X.py[:variant].',
                    flag_values=FLAGS, required=True)
flags.DEFINE_string('workdir_root', None, 'Folder of the fold runs.', flag_values=FLAGS,
                    required=True)
flags.DEFINE_list('folds', None, 'Folds to run (default: all).', flag_values=FLAGS)
flags.DEFINE_multi_string('set', None, 'Config override key=value, for every fold (repeatable).',
                          flag_values=FLAGS)
cli.define_compilation_cache(FLAGS)


def _crossval(f) -> None:
  from agmr_jax import compile_cache  # pylint: disable=g-import-not-at-top  (JAX: after flags)
  from agmr_jax.evaluation import crossval  # pylint: disable=g-import-not-at-top
  if f.folds and not all(k.strip().isdigit() for k in f.folds):
    raise ValueError(f'--folds takes fold numbers such as 0,1,2; got {",".join(f.folds)}')
  folds = [int(k) for k in f.folds] if f.folds else None
  root = pathlib.Path(f.workdir_root)
  cache = compile_cache.enable(compile_cache.resolve(f.compilation_cache, root / 'fold=0'))
  result = crossval.run_crossval(f.config, f.workdir_root, folds=folds, overrides=f.set or ())
  compile_cache.log_counts(cache)
  print(crossval.markdown(result))
  print(f'wrote {root / "crossval.md"} and crossval.csv')
  print(f'predict new scans with the ensemble of its folds: agmr-predict -i SCANS -o OUT '
        f'--workdir {root}')


def main(argv=None) -> int:
  # A fold stopped early (RuntimeError) or diverged (FloatingPointError) is one line too.
  return cli.run(FLAGS, argv, _crossval,
                 errors=cli.USER_ERRORS + (RuntimeError, FloatingPointError))


if __name__ == '__main__':
  cli.entry(main)
