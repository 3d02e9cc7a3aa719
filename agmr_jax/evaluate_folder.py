r"""Scores a folder of predicted masks against a folder of labels (evaluation/folder.py).

  agmr-evaluate-folder --pred PRED_DIR --gt GT_DIR --out OUT_DIR [--overwrite] \
      [--lesion_metrics isles22|atlas2]
  python -m agmr_jax.evaluate_folder ...   (the same command)

Pairs `{case}.nii.gz` by name and writes OUT_DIR/cases.csv, summary.json, summary.md and
dsc_boxplot.png, the report `agmr-evaluate` writes; OUT_DIR is a run for `agmr-compare`.
"""

from absl import flags

from agmr_jax import cli

FLAGS = cli.new_flags()
flags.DEFINE_string('pred', None, 'Folder of predicted masks {case}.nii.gz.', flag_values=FLAGS,
                    required=True)
flags.DEFINE_string('gt', None, 'Folder of label masks {case}.nii.gz.', flag_values=FLAGS,
                    required=True)
flags.DEFINE_string('out', None, 'Report folder.', flag_values=FLAGS, required=True)
flags.DEFINE_bool('overwrite', False, 'Replace an existing report folder.', flag_values=FLAGS)
flags.DEFINE_enum('lesion_metrics', 'isles22', ['isles22', 'atlas2'],
                  'Lesion metric definitions: ISLES 2022 (26-connected, volume in ml) or ATLAS '
                  'v2.0 (6-connected, volume in voxels).', flag_values=FLAGS)


def _evaluate_folder(f) -> None:
  from agmr_jax.evaluation import folder  # pylint: disable=g-import-not-at-top
  from agmr_jax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  result = folder.evaluate_folder(f.pred, f.gt, f.out, overwrite=f.overwrite,
                                  lesion_variant=f.lesion_metrics)
  for name, text in metrics.format_summary(result['summary']).items():
    print(f'{name:>18}: {text}')
  print(f'wrote {f.out} ({len(result["rows"])} cases)')


def main(argv=None) -> int:
  return cli.run(FLAGS, argv, _evaluate_folder)


if __name__ == '__main__':
  cli.entry(main)
