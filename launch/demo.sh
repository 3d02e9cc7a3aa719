#!/usr/bin/env bash
# The main job on the built-in synthetic data, from a fresh checkout:
#   installs the requirements into .venv, writes 60 synthetic ATLAS-like subjects (NIfTI, ATLAS
#   R1.2 layout) and builds their slice records under data/, trains AGMR-Net on 36 subjects,
#   validates on 12 and chooses the post-processing on them, evaluates the 12 held-out subjects
#   in their original geometry, prints the per-case table and writes the predicted masks to
#   runs/demo/eval/test/predictions/.
# Re-running resumes (or, when finished, only re-evaluates). Variables: WORKDIR (runs/demo),
# CONFIG (configs/agmr_net.py:demo), DATA_DIR (data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
SECONDS=0
.venv/bin/python -m agmr_jax.main \
  --config="${CONFIG:-configs/agmr_net.py:demo}" \
  --config.data.data_dir="${DATA_DIR:-data}" \
  --workdir="${WORKDIR:-runs/demo}"
echo "Main job finished in $((SECONDS / 60)) min $((SECONDS % 60)) s (after installation)."
