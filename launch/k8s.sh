#!/usr/bin/env bash
# Renders launch/k8s_jobset.yaml (one training job on NUM_HOSTS pods under jax.distributed) and
# submits it with kubectl, or prints it with --dry-run.
#
#   NAME=agmr-1 IMAGE=gcr.io/p/agmr-jax:latest NUM_HOSTS=4 CONFIG=configs/agmr_net.py \
#   WORKDIR=/runs/agmr-1 PVC=runs bash launch/k8s.sh [--dry-run] [more agmr_jax.main arguments]
#
# Variables:
#   NAME          (required) JobSet name: lower-case letters, digits and '-'.
#   IMAGE         (required) container image holding this repository and its Python packages.
#   NUM_HOSTS     (required) pods (= processes under jax.distributed).
#   CONFIG        (required) config file[:variant], relative to REPO_DIR.
#   WORKDIR       (required) under MOUNT, so every pod sees the same checkpoints.
#   PVC           (required) a ReadWriteMany PersistentVolumeClaim mounted at MOUNT.
#   MOUNT         (/runs) where the PVC is mounted in each pod.
#   GPUS_PER_HOST (1) nvidia.com/gpu per pod.
#   PORT          (12345) coordinator port on pod 0.
#   REPO_DIR      (/app) the repository inside the image.
#   PYTHON        (python) interpreter inside the image.
#   MAX_RESTARTS  (10) whole-set restarts after a preemption or failure (each one resumes).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fail() { echo "error: $*" >&2; exit 2; }

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
for var in NAME IMAGE NUM_HOSTS CONFIG WORKDIR PVC; do
  [ -n "${!var:-}" ] || fail "$var is not set; the variables are listed at the top of $0"
done
[[ "$NAME" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || fail "NAME=$NAME is not a DNS label"
[[ "$NUM_HOSTS" =~ ^[1-9][0-9]*$ ]] || fail "NUM_HOSTS=$NUM_HOSTS is not a positive integer"
export MOUNT="${MOUNT:-/runs}" GPUS_PER_HOST="${GPUS_PER_HOST:-1}" PORT="${PORT:-12345}"
export REPO_DIR="${REPO_DIR:-/app}" PYTHON="${PYTHON:-python}" MAX_RESTARTS="${MAX_RESTARTS:-10}"
case "$WORKDIR" in
  "$MOUNT"/*) ;;
  *) fail "WORKDIR=$WORKDIR is not under MOUNT=$MOUNT: the pods would not share it" ;;
esac
extra=""
for arg in "$@"; do extra+="$(printf '%q ' "$arg")"; done
export EXTRA_ARGS="$extra" NAME IMAGE NUM_HOSTS CONFIG WORKDIR PVC

# Only the listed names are substituted: $JOB_COMPLETION_INDEX stays for the pod's shell.
manifest="$(python3 - "$here/k8s_jobset.yaml" <<'EOF'
import os, string, sys
names = ('NAME IMAGE NUM_HOSTS CONFIG WORKDIR PVC MOUNT GPUS_PER_HOST PORT REPO_DIR PYTHON '
         'MAX_RESTARTS EXTRA_ARGS').split()
text = open(sys.argv[1]).read()
print(string.Template(text).safe_substitute({n: os.environ[n] for n in names}))
EOF
)"
if [ "$dry_run" = 1 ]; then
  printf '%s\n' "$manifest"
  exit 0
fi
command -v kubectl >/dev/null || fail "kubectl not found (use --dry-run to only print the manifest)"
printf '%s\n' "$manifest" | kubectl apply -f -
