#!/usr/bin/env bash
# Multi-host training on one machine: N processes of `python -m lcx.train` on 127.0.0.1.
#
#   launch/multiprocess.sh N --config configs/pretrain.py:tiny --workdir runs/mp [--config.x=y ...]
#
# N          number of processes (each one is a JAX "host")
# the rest   flags for lcx.train, identical for every process
# LCX_CPU_DEVICES (default 8) CPU devices are split evenly between the processes, so a run with
# N processes builds the same global mesh as one process with all the devices. Process 0's output
# is shown; process i > 0 writes to $LCX_LOG_DIR/process_i.log (default: a temporary folder).
# When one process fails, the script names it and kills the others at once (SIGKILL: they are
# blocked on their lost peer and cannot save anything; SIGTERM would read as a preemption), then
# exits with the failed process's status. A preemption (SIGTERM) stops every process after one
# checkpoint, each exiting 75; the script then exits 75.
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
n=$1; shift
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
devices=${LCX_CPU_DEVICES:-8}
if (( devices % n )); then
  echo "multiprocess.sh: $devices CPU devices do not split evenly over $n processes" >&2
  exit 2
fi
log_dir=${LCX_LOG_DIR:-$(mktemp -d)}
mkdir -p "$log_dir"
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
declare -A index_of
for ((i = 0; i < n; i++)); do
  env XLA_FLAGS="--xla_force_host_platform_device_count=$((devices / n))" JAX_PLATFORMS=cpu \
    "$python" -m lcx.train --coordinator_address="127.0.0.1:$port" --num_processes="$n" \
    --process_id="$i" "$@" > >(if ((i == 0)); then cat; else cat > "$log_dir/process_$i.log"; fi) 2>&1 &
  pids+=($!)
  index_of[$!]=$i
done
status=0
while ((${#pids[@]})); do
  finished=""
  if wait -n -p finished "${pids[@]}"; then code=0; else code=$?; fi
  [[ -n "$finished" ]] || break
  pids=($(for p in "${pids[@]}"; do [[ $p == "$finished" ]] || echo "$p"; done))
  if ((code == 75)); then
    status=75  # preempted: the others stop at the same step by themselves
  elif ((code)); then
    status=$code
    echo "multiprocess.sh: process ${index_of[$finished]} of $n exited with status $code; killing" \
      "the others (logs of processes 1-$((n - 1)) in $log_dir)" >&2
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait || true
    break
  fi
done
exit $status
