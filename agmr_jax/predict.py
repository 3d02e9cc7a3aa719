r"""Lesion masks for new NIfTI scans with a trained run (inference/predict.py says how).

  agmr-predict -i scan.nii.gz -o out/ --workdir runs/x
  agmr-predict -i scans/ -o out/ --workdir runs/cv_root   (the ensemble of its folds)
  agmr-predict -i scans/ -o out/ --workdir runs/a --workdir runs/b   (an ensemble of two runs)
  agmr-predict -i scans/ -o out/ --workdir runs/x [--checkpoint best] [--save_probabilities] \
      [--tta] [--overlay] [--overwrite] [--threshold T] [--min_component_mm3 V]
  python -m agmr_jax.predict ...   (the same command)

Writes OUT/{case}.nii.gz (uint8 mask on the input's grid), and with the options
OUT/probabilities/{case}.nii.gz and OUT/overlays/{case}.png. Nothing is replaced without
--overwrite; bad input stops everything before any output appears.
"""

from absl import flags

from agmr_jax import cli

FLAGS = cli.new_flags()
flags.DEFINE_string('input', None, 'A NIfTI file or a folder of them.', short_name='i',
                    flag_values=FLAGS, required=True)
flags.DEFINE_string('out', None, 'Output folder.', short_name='o', flag_values=FLAGS)
flags.DEFINE_multi_string('workdir', None, 'Training workdir of the run to use; repeat it for an '
                          'ensemble (probabilities averaged), or give a cross-validation root for '
                          'the ensemble of its folds.', flag_values=FLAGS, required=True)
flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.", flag_values=FLAGS)
flags.DEFINE_bool('save_probabilities', False, 'Also write float32 probability maps.',
                  flag_values=FLAGS)
flags.DEFINE_bool('tta', False, 'Average with the left-right flipped prediction.',
                  flag_values=FLAGS)
flags.DEFINE_list('tta_axes', None, "Flip axes of test-time augmentation: 'lr' (the --tta "
                  "default), 'ap', or lr,ap (4 passes); implies --tta.", flag_values=FLAGS)
flags.DEFINE_bool('overlay', False, 'Write PNGs of four axial slices with the mask outlined.',
                  flag_values=FLAGS)
flags.DEFINE_bool('overwrite', False, 'Replace existing outputs.', flag_values=FLAGS)
flags.DEFINE_bool('skip_bad', False, 'Predict the good cases of a folder, list the bad ones with '
                  'their reasons and exit 1 (default: the first bad file stops everything before '
                  'any output).', flag_values=FLAGS)
flags.DEFINE_float('threshold', None, "Probability threshold of the mask (default: the run's "
                   'postprocess.json, else 0.5).', flag_values=FLAGS)
flags.DEFINE_float('min_component_mm3', None, 'Remove lesion components smaller than this '
                   "(default: the run's postprocess.json, else 0).", flag_values=FLAGS)
flags.DEFINE_integer('batch_size', None, "Slices per batch (default: the run's eval batch).",
                     lower_bound=1, flag_values=FLAGS)
cli.deprecated_alias(FLAGS, 'output', 'out')
cli.define_compilation_cache(FLAGS)
cli.require(FLAGS, 'out')


def _predict(f) -> None:
  from agmr_jax import compile_cache  # pylint: disable=g-import-not-at-top  (JAX: after flags)
  from agmr_jax.inference import predict  # pylint: disable=g-import-not-at-top
  if f.workdir:
    compile_cache.enable(compile_cache.resolve(f.compilation_cache, f.workdir[0]))
  predict.predict(
      f.input, f.out, f.workdir, checkpoint=f.checkpoint,
      save_probabilities=f.save_probabilities, tta=tuple(f.tta_axes) if f.tta_axes else f.tta,
      overlay=f.overlay,
      overwrite=f.overwrite, threshold=f.threshold, min_component_mm3=f.min_component_mm3,
      batch_size=f.batch_size, skip_bad=f.skip_bad)


def main(argv=None) -> int:
  return cli.run(FLAGS, argv, _predict)


if __name__ == '__main__':
  cli.entry(main)
