#!/usr/bin/env bash
# Mutation check of the modules that decide correctness, with mutmut (slow: by hand, not in CI).
#
#   bash tests/mutation.sh [MODULE ...]    # default: every module below
#
# mutmut (pinned in requirements-test.txt, configured in setup.cfg [mutmut]) copies the repository
# into mutants/ (git-ignored), makes every mutant of the source_paths there, runs the selected
# tests once to learn which tests reach which function, then, for each mutant of the functions
# named below, runs the tests that reach it (-x). Killed: they fail; survived: they pass.
# Each run checks every mutant of the modules it names again (the test-to-function map is kept in
# mutants/; rm -rf mutants/ after changing tests' reach). Prints the table per module and the
# mutants not killed; `.venv/bin/mutmut show NAME` prints one's diff. JOBS (default 2): mutants
# run at once; the log is mutants/run.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

m=agmr_jax.evaluation.metrics
declare -A PATTERNS=(
  [metrics]="$m.x__spacing__* $m.x_overlap_from_counts__* $m.x__empty_kind__* $m.x__crop_box__*
    $m.x__surface__* $m.x_surface_distances__* $m.x__distance_metrics__* $m.x_case_metrics__*
    $m.x__global_dsc__* $m.x_summarize__*"
  [lesions]="agmr_jax.evaluation.lesions.*"
  [postprocess]="agmr_jax.inference.postprocess.*PostProcess*__call__*
    agmr_jax.inference.postprocess.x_remove_small_components__* agmr_jax.inference.postprocess.x_grid__*
    agmr_jax.inference.postprocess.x_load__* agmr_jax.inference.postprocess.x_load_shared__*"
  [tune]="agmr_jax.evaluation.tune.*Tally*add__* agmr_jax.evaluation.tune.*Tally*means__*
    agmr_jax.evaluation.tune.*Tally*best__* agmr_jax.evaluation.tune.x__preference__*"
  [recipes]="input_pipeline.recipes.*"
  [pipeline]="input_pipeline.pipeline.x_train_dataset__* input_pipeline.pipeline.x_oversample_lesions__*
    input_pipeline.pipeline.x_lesion_repeats__* input_pipeline.pipeline.*SliceDataset*split_folds__*"
  [orientation]="input_pipeline.orientation.*"
  [checkpointing]="agmr_jax.checkpointing.x_parse_checkpoint__* agmr_jax.checkpointing.x_choose_checkpoint__*"
)
ORDER=(lesions metrics tune postprocess orientation pipeline recipes checkpointing)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ORDER[@]}")
patterns=()
for module in "${modules[@]}"; do
  [ -n "${PATTERNS[$module]:-}" ] || { echo "error: unknown module $module (${ORDER[*]})" >&2; exit 2; }
  read -r -a more <<< "$(echo ${PATTERNS[$module]})"
  patterns+=("${more[@]}")
done

mkdir -p mutants
"$PY" -m mutmut run --max-children "${JOBS:-2}" "${patterns[@]}" > mutants/run.log 2>&1 \
  || { tail -c 2000 mutants/run.log | tr '\r' '\n' | tail -n 20 >&2; echo "error: mutmut run failed (mutants/run.log)" >&2; exit 1; }

# A file, not a variable: the list of every mutant outgrows an environment variable's limit.
"$PY" -m mutmut results --all true > mutants/results.txt 2>/dev/null
MODULES="${modules[*]}" PATTERNS_BY_MODULE="$(for k in "${modules[@]}"; do
  echo "$k $(echo ${PATTERNS[$k]})"; done)" RESULTS=mutants/results.txt "$PY" - <<'PYEOF'
import collections
import fnmatch
import os

patterns = {line.split()[0]: line.split()[1:] for line in os.environ['PATTERNS_BY_MODULE'].splitlines()}
status = {}
for line in open(os.environ['RESULTS']).read().splitlines():
  name, _, state = line.strip().partition(': ')
  if state:
    status[name] = state
rows, survivors = [], []
for module, pats in patterns.items():
  names = [n for n in status if any(fnmatch.fnmatch(n, p) for p in pats)]
  counts = collections.Counter(status[n] for n in names)
  other = ', '.join(f'{v} {k}' for k, v in sorted(counts.items()) if k not in ('killed', 'survived'))
  rows.append(f"| {module} | {len(names)} | {counts['killed']} | {counts['survived']} | {other} |")
  survivors += [n for n in names if status[n] != 'killed']
print('| module | mutants | killed | survived | other |\n|---|---|---|---|---|')
print('\n'.join(rows))
if survivors:
  print('\nNot killed (`mutmut show NAME` for the diff):')
  print('\n'.join(f'  {n}: {status[n]}' for n in survivors))
PYEOF
