#!/usr/bin/env bash
# Runs one training job on every worker of a Cloud TPU VM slice (e.g. v4-32: 4 workers) under
# jax.distributed, which detects the slice by itself (`agmr_jax.main --distributed`).
#
#   TPU_NAME=my-slice ZONE=us-central2-b CONFIG=configs/agmr_net.py WORKDIR=/mnt/runs/agmr \
#       bash launch/tpu_vm.sh [more agmr_jax.main arguments]
#
# Variables:
#   TPU_NAME  (required) the TPU VM (slice) name.
#   ZONE      (required) its zone.
#   CONFIG    (required) config file[:variant], relative to REPO_DIR.
#   WORKDIR   (required) a directory every worker sees (Filestore/NFS or a gcsfuse mount); the
#             loop writes with local file I/O, so gs:// URLs are refused here.
#   PROJECT   (gcloud's default) the Google Cloud project.
#   REPO_DIR  (agmr_jax, relative to the home directory) the repository on every worker; copy it
#             there first, e.g. `gcloud compute tpus tpu-vm scp --recurse . $TPU_NAME:agmr_jax
#             --worker=all --zone=$ZONE`.
#   PYTHON    (.venv/bin/python, relative to REPO_DIR) interpreter on the workers, with jax[tpu].
# A maintenance event or spot preemption sends SIGTERM: all workers save the same step and exit
# with status 75; run this script again to resume.
set -euo pipefail
fail() { echo "error: $*" >&2; exit 2; }
for var in TPU_NAME ZONE CONFIG WORKDIR; do
  [ -n "${!var:-}" ] || fail "$var is not set; the variables are listed at the top of $0"
done
case "$WORKDIR" in
  gs://*) fail "WORKDIR=$WORKDIR: mount the bucket (gcsfuse) and pass the mount path" ;;
esac
command -v gcloud >/dev/null || fail "gcloud not found (install the Google Cloud CLI)"

remote="cd $(printf '%q' "${REPO_DIR:-agmr_jax}") && exec $(printf '%q' "${PYTHON:-.venv/bin/python}")"
remote+=" -m agmr_jax.main --distributed --config=$(printf '%q' "$CONFIG")"
remote+=" --workdir=$(printf '%q' "$WORKDIR")"
for arg in "$@"; do remote+=" $(printf '%q' "$arg")"; done

project=()
[ -n "${PROJECT:-}" ] && project=(--project="$PROJECT")
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${project[@]}" --worker=all \
  --command="$remote"
