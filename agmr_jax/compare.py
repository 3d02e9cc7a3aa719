r"""The papers' comparison table with paired Wilcoxon tests (evaluation/compare.py says how).

  agmr-compare --runs runs/agmr,runs/dunet,runs/unet --reference runs/agmr \
      [--split test] [--names AGMR-Net,D-UNet,U-Net] [--out results/table4] [--overwrite] \
      [--metrics dsc,lesion_f1,volume_diff_ml]
  python -m agmr_jax.compare ...   (the same command; `--runs A B C` is still accepted)

Prints the markdown table; with --out PREFIX also writes PREFIX.md, PREFIX.csv and
PREFIX_dsc_boxplot.png (never replacing them without --overwrite).
"""

import sys
from collections.abc import Sequence

from absl import flags

from agmr_jax import cli

FLAGS = cli.new_flags()
flags.DEFINE_list('runs', None, 'Evaluated run folders (or cross-validation roots), comma-separated.',
                  flag_values=FLAGS, required=True)
flags.DEFINE_string('reference', None, 'The run the others are tested against.',
                    flag_values=FLAGS, required=True)
flags.DEFINE_string('split', 'test', 'Evaluation name under eval/.', flag_values=FLAGS)
flags.DEFINE_list('names', None, 'Display names, in the order of --runs.', flag_values=FLAGS)
flags.DEFINE_string('out', None, 'Write OUT.md, OUT.csv and OUT_dsc_boxplot.png.',
                    flag_values=FLAGS)
flags.DEFINE_bool('overwrite', False, 'Replace existing output files.', flag_values=FLAGS)
flags.DEFINE_list('metrics', None, 'Per-case metrics to tabulate and test, e.g. '
                  'dsc,lesion_f1,volume_diff_ml (default: the papers\' columns and the challenge '
                  'metrics every run has).', flag_values=FLAGS)

_LISTS = ('--runs', '--names')


def join_space_separated(argv: Sequence[str]) -> list[str]:
  """The argparse spelling `--runs A B C` -> `--runs=A,B,C` (with a deprecation notice)."""
  out, i = [], 0
  while i < len(argv):
    if argv[i] in _LISTS:
      j = i + 1
      while j < len(argv) and not argv[j].startswith('-'):
        j += 1
      if j - i > 2:
        print(f'note: {argv[i]} A B is deprecated; use {argv[i]} A,B', file=sys.stderr)
      out.append(f'{argv[i]}={",".join(argv[i + 1:j])}' if j > i + 1 else argv[i])
      i = j
    else:
      out.append(argv[i])
      i += 1
  return out


def _compare(f) -> None:
  from agmr_jax.evaluation import compare  # pylint: disable=g-import-not-at-top
  compare.run(f.runs, f.reference, split=f.split, names=f.names, out=f.out,
              overwrite=f.overwrite, metric_names=f.metrics)


def main(argv=None) -> int:
  argv = join_space_separated(sys.argv[1:] if argv is None else argv)
  return cli.run(FLAGS, argv, _compare)


if __name__ == '__main__':
  cli.entry(main)
