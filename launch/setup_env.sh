#!/usr/bin/env bash
# Creates .venv (if missing), installs the pinned requirements into it when they changed, and
# installs this project itself (editable, no dependencies: the pins above are the dependencies),
# so both `python -m agmr_jax.main` and the console scripts (agmr-train, ...) work.
# Sourced by demo.sh and test.sh; safe to run repeatedly (a stamp file records what is installed).
# Extra requirement files to install can be passed as arguments.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))'; then
  echo "error: Python 3.11 or 3.12 is needed (found $("$python" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "Creating $root/.venv"
  "$python" -m venv "$root/.venv"
  "$root/.venv/bin/python" -m pip install -q --upgrade pip
fi
for req in "$root/requirements.txt" "$@"; do
  stamp="$root/.venv/.installed-$(basename "$req")"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "Installing $(basename "$req") into .venv (a few minutes the first time)"
    "$root/.venv/bin/python" -m pip install -q -r "$req"
    echo "$want" > "$stamp"
  fi
done
stamp="$root/.venv/.installed-project"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing agmr_jax itself into .venv (editable)"
  "$root/.venv/bin/python" -m pip install -q --no-deps -e "$root"
  echo "$want" > "$stamp"
fi
