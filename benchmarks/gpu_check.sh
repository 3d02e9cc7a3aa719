#!/usr/bin/env bash
# The prepared accelerator check (docs/gpu_check.md). On a lent GPU, from the repository root:
#   bash benchmarks/gpu_check.sh [benchmarks.gpu_check flags, e.g. --resume FILE.json]
# Installs the wheels carried in .whl/ (what the GPU machine lacks: grain, tfds, nibabel, ...)
# into /tmp/site, then runs `python -m benchmarks.gpu_check`. Results go to benchmarks/results/
# and, when the device tool's $OUT is set, are copied there after every stage.
# CPU dry run (what tests/test_gpu_check.py runs): bash benchmarks/gpu_check.sh --dry_run
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# The wheels are for the GPU machine's Python 3.12: a dry run uses the local environment.
if compgen -G ".whl/*.whl" >/dev/null && [[ " $* " != *" --dry_run "* ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" -m benchmarks.gpu_check "$@"
