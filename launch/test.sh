#!/usr/bin/env bash
# The test suite, from a fresh checkout: installs the requirements (plus the test-only reference
# library and the CPU PyTorch used by the twin-parity tests) into .venv, then runs pytest.
# The linter (ruff, rules in pyproject.toml) runs first: a new finding fails the run.
# Extra arguments go to pytest (e.g. `bash launch/test.sh -k pipeline`).
set -euo pipefail
cd "$(dirname "$0")/.."
extra=(requirements-test.txt)
[ -f benchmarks/requirements-torch.txt ] && extra+=(benchmarks/requirements-torch.txt)
bash launch/setup_env.sh "${extra[@]}"
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest -q "$@"
