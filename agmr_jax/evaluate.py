r"""Evaluates a trained run: per-case 3D metrics in the source geometry (evaluation/evaluate.py).

  agmr-evaluate --workdir runs/x [--split test] [--checkpoint best|latest|STEP] [--tta] \
      [--nopostprocess] [--overwrite]
  python -m agmr_jax.evaluate ...   (the same command)

Writes {workdir}/eval/{name}/ (cases.csv, summary.json, summary.md, dsc_boxplot.png,
predictions/) and prints the per-case table.
"""

from absl import flags

from agmr_jax import cli

FLAGS = cli.new_flags()
flags.DEFINE_string('workdir', None, 'Training workdir.', flag_values=FLAGS, required=True)
flags.DEFINE_string('split', 'test', "'test' or 'validation'.", flag_values=FLAGS)
flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.", flag_values=FLAGS)
flags.DEFINE_bool('overwrite', False, 'Replace an existing evaluation of this split.',
                  flag_values=FLAGS)
flags.DEFINE_bool('write_predictions', True, 'Write predicted masks as NIfTI.', flag_values=FLAGS)
flags.DEFINE_bool('tta', False, 'Average with the left-right flipped prediction.',
                  flag_values=FLAGS)
flags.DEFINE_list('tta_axes', None, "Flip axes of test-time augmentation: 'lr' (the --tta "
                  "default), 'ap', or lr,ap (4 passes); implies --tta.", flag_values=FLAGS)
flags.DEFINE_bool('postprocess', True, "Apply the run's validation-chosen post-processing "
                  '(postprocess.json); --nopostprocess: threshold 0.5 only.', flag_values=FLAGS)
cli.deprecated_alias(FLAGS, 'flip_tta', 'tta')
cli.define_compilation_cache(FLAGS)


def _evaluate(f) -> None:
  from agmr_jax import compile_cache  # pylint: disable=g-import-not-at-top  (JAX: after flags)
  from agmr_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  compile_cache.enable(compile_cache.resolve(f.compilation_cache, f.workdir))
  result = evaluate.evaluate_run(
      f.workdir, split=f.split, checkpoint=f.checkpoint, overwrite=f.overwrite,
      write_predictions=f.write_predictions,
      tta=tuple(f.tta_axes) if f.tta_axes else f.tta, post=f.postprocess)
  print(f'wrote {result["out_dir"]}')


def main(argv=None) -> int:
  return cli.run(FLAGS, argv, _evaluate)


if __name__ == '__main__':
  cli.entry(main)
