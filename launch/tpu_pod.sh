#!/usr/bin/env bash
# A run or a study on a Cloud TPU VM pod: copy the repository to every worker, set up its
# environment there, then start the same command on all workers at once (JAX finds its peers on a
# TPU pod by itself).
#
#   launch/tpu_pod.sh TPU_NAME ZONE --config configs/pretrain.py:350m --workdir gs://bucket/runs/x
#   launch/tpu_pod.sh TPU_NAME ZONE experiments/extrapolation.py:base --out gs://bucket/study
#
# TPU_NAME, ZONE  the TPU VM and its zone (gcloud's --project comes from its configuration)
# the rest        flags for lcx.train, or a study and its lcx.sweep flags (see launch/local.sh)
# The workdir should be on storage every worker sees (a GCS bucket). SETUP=0 skips the copy and
# environment set-up on later runs.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
tpu=$1 zone=$2
shift 2
cd "$(dirname "$0")/.."
ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all)
if [[ "${SETUP:-1}" == 1 ]]; then
  git ls-files -z | tar --null -T - -czf /tmp/lcx-src.tgz
  gcloud compute tpus tpu-vm scp /tmp/lcx-src.tgz "$tpu":~/lcx-src.tgz --zone="$zone" --worker=all
  "${ssh[@]}" --command="mkdir -p ~/lcx && tar -xzf ~/lcx-src.tgz -C ~/lcx && cd ~/lcx && \
    make venv PYTHON=python3 && .venv/bin/pip install --quiet 'jax[tpu]==0.10.2'"
fi
"${ssh[@]}" --command="cd ~/lcx && launch/local.sh $(printf '%q ' "$@")"
