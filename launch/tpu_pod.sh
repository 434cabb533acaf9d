#!/usr/bin/env bash
# A run, an evaluation or a study on a Cloud TPU VM pod: copy the repository to every worker, set
# up its environment there, then start the same command on all workers at once (JAX finds its
# peers on a TPU pod by itself).
#
#   launch/tpu_pod.sh TPU_NAME ZONE                     # set up the workers only
#   launch/tpu_pod.sh TPU_NAME ZONE --config configs/pretrain.py:350m --workdir /mnt/lcx/runs/x
#   WORKERS=0 launch/tpu_pod.sh TPU_NAME ZONE evaluate --workdir /mnt/lcx/runs/x
#   launch/tpu_pod.sh TPU_NAME ZONE experiments/extrapolation.py:base --out /mnt/lcx/study
#
# TPU_NAME, ZONE  the TPU VM and its zone (gcloud's --project comes from its configuration)
# the rest        what launch/local.sh takes: lcx.train flags, `evaluate` and lcx.evaluate flags,
#                 or a study and its lcx.sweep flags
# Workdirs must be on storage every worker mounts at the same path (a Filestore/NFS share or a
# gcsfuse bucket): every process writes its part of each checkpoint there. SETUP=0 skips the copy
# and the set-up (the sweep's --launcher=tpu_pod:TPU_NAME:ZONE sets it); WORKERS (default all)
# picks the workers that run the command.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,18p' "$0" >&2
  exit 2
fi
tpu=$1 zone=$2
shift 2
cd "$(dirname "$0")/.."
ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone")
if [[ "${SETUP:-1}" == 1 ]]; then
  git ls-files -z | tar --null -T - -czf /tmp/lcx-src.tgz
  gcloud compute tpus tpu-vm scp /tmp/lcx-src.tgz "$tpu":~/lcx-src.tgz --zone="$zone" --worker=all
  "${ssh[@]}" --worker=all --command="mkdir -p ~/lcx && tar -xzf ~/lcx-src.tgz -C ~/lcx && \
    cd ~/lcx && make venv PYTHON=python3 && .venv/bin/pip install --quiet 'jax[tpu]==0.10.2'"
fi
if [[ $# -gt 0 ]]; then
  "${ssh[@]}" --worker="${WORKERS:-all}" --command="cd ~/lcx && launch/local.sh $(printf '%q ' "$@")"
fi
