#!/usr/bin/env bash
# The accelerator check: on a fresh GPU or TPU host, from the repository root,
#
#   bash benchmarks/accelerator.sh [OUT_DIR]        # OUT_DIR defaults to benchmarks/
#
# 1. installs requirements.txt and the accelerator build of the pinned jax (jax[cuda12] on a host
#    with nvidia-smi, jax[tpu] otherwise; LCX_SKIP_INSTALL=1 keeps what the host has),
# 2. runs the kernel tests on the device (tests/test_accelerator.py: every scheme through `auto`
#    against dense, values and gradients), then measures the device's kernel table
#    (python -m lcx.bench.kernels: one attention layer per kernel, scheme and length), which
#    `auto` runs by in the parts after it,
# 3. runs `python -m lcx.bench` on the 125m preset (bfloat16): every scheme's train step at
#    L=1024 and 4096 through `auto` (what each scheme costs as lcx runs it), `none` and ALiBi
#    also through blockwise (the plain-JAX tiled kernel the biased schemes fall back to), every
#    scheme with a bias (and none) through lcx's Pallas kernel on a GPU (the bias computed in
#    the tile), and a 32K-token evaluation; each part writes accelerator-<part>.json and .log
#    (its tables) in OUT_DIR.
#
# Every part has its own time limit and the script goes on after a failure, so one slow or broken
# part leaves the others' figures. LCX_SCHEMES (comma-separated), LCX_LENGTHS, LCX_EVAL_LENGTH,
# LCX_MODEL (a preset), LCX_TOKENS (per train step) and LCX_PARTS (which of
# tests,train,pallas,eval,blockwise; all by default) change the run (a CPU smoke test:
# LCX_SKIP_INSTALL=1 LCX_MODEL=tiny LCX_LENGTHS=128 LCX_EVAL_LENGTH=1024 LCX_TOKENS=1024).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
lengths=${LCX_LENGTHS:-1024,4096}
# One scan over the layers: the same step, compiled in a fraction of the time.
bench=($python -m lcx.bench --model="${LCX_MODEL:-125m}" --model_fields=scan_layers=true
       --repeats=3 --tokens_per_step="${LCX_TOKENS:-32768}" --profile_lengths=
       --data_tokenizers=)  # the input pipeline is the host's: measured by lcx.bench on a CPU
parts=,${LCX_PARTS:-tests,kernels,train,pallas,eval,blockwise},
for p in ${parts//,/ }; do
  [[ $p =~ ^(tests|kernels|train|pallas|eval|blockwise)$ ]] || {
    echo "LCX_PARTS: unknown part '$p'; allowed: tests, kernels, train, pallas, eval, blockwise"
    exit 2; }
done
failed=()

part() {  # part NAME SECONDS COMMAND...: run one part with its limit, its output kept
  local name=$1 limit=$2
  shift 2
  [[ $name = install || $name = versions || $parts = *,${name%%-*},* ]] || return 0
  echo "== $(date +%T) $name (at most ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/accelerator-$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "== $name failed (exit $rc)"; failed+=("$name"); }
}

if [ "${LCX_SKIP_INSTALL:-0}" != 1 ]; then
  extra=tpu; command -v nvidia-smi >/dev/null && extra=cuda12
  jax_version=$(sed -n 's/^jax==//p' requirements.txt)
  part install 600 $python -m pip install -q -r requirements.txt "jax[$extra]==$jax_version"
fi
# An image that brings a newer jax than requirements.txt pins (and cannot install the pinned
# one) may break flax's import: then retry with the compatibility shim (benchmarks/jax_compat).
if ! $python -c "import flax.nnx" 2>/dev/null; then
  echo "== flax does not import with this host's jax; retrying with benchmarks/jax_compat"
  export PYTHONPATH="$PWD/benchmarks/jax_compat:$PYTHONPATH"
  $python -c "import flax.nnx" || { echo "flax still does not import; install requirements.txt"; exit 1; }
fi
# Read after the shim is in place: the list comes from lcx, which imports flax.
schemes=${LCX_SCHEMES:-$($python -c "from lcx import bench; print(','.join(bench.SCHEMES))")}
part versions 60 $python -c "
import jax, flax, optax
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)
print(jax.devices())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv

part tests 240 $python -m pytest -q tests/test_accelerator.py
# The kernel table `auto` chooses from (lcx.attention.choice): every kernel that runs each scheme
# here, one attention layer timed per length; the train and eval parts below then run `auto` by
# it. Copy it to lcx/attention/tables/$device.json to make it this device's table for everyone.
device=$($python -c "from lcx.attention import choice; print(choice.device_name())")
part kernels 180 $python -m lcx.bench.kernels --model="${LCX_MODEL:-125m}" --repeats=3 \
  --lengths="$lengths,${LCX_EVAL_LENGTH:-32768}" --tokens="${LCX_TOKENS:-32768}" \
  --out="$out/kernel-table-$device.json"
table="$(cd "$out" && pwd)/kernel-table-$device.json"
[ -f "$table" ] && export LCX_KERNEL_TABLE="$table"
# none, RoPE and ALiBi first at every length (the headline: what a bias costs), then the other
# schemes with none again as their reference: on GPU a biased scheme's step takes minutes to
# compile until it has a fused kernel, and a time limit should cut the rest, not the headline.
IFS=, read -ra each_length <<<"$lengths"
first=$(tr , '\n' <<<"$schemes" | grep -xE 'none|rope|alibi' | paste -sd,)
rest=$(tr , '\n' <<<"$schemes" | grep -vxE 'rope|alibi' | paste -sd,)
for group in first rest; do
  [ -n "${!group}" ] && [ "${!group}" != none -o $group = first ] || continue
  for length in "${each_length[@]}"; do
    name=train-$length; [ $group = rest ] && name=train-$length-more
    part "$name" 300 "${bench[@]}" --schemes="${!group}" --lengths="$length" \
      --implementations=auto --eval_lengths= --out="$out/accelerator-$name.json"
  done
done
# lcx's Pallas kernel (Triton on a GPU, Mosaic on a TPU) for none and every scheme with a bias.
biased=$($python -c "
from lcx import bench, positions
print(','.join(s for s in '$schemes'.split(',') if s == 'none'
               or positions.bias_kind(bench.VARIANTS[s]['position'])))")
part pallas 300 "${bench[@]}" --schemes="$biased" --lengths="$lengths" \
  --implementations=pallas --eval_lengths= --out="$out/accelerator-pallas.json"
part eval 240 "${bench[@]}" --lengths= --eval_lengths="${LCX_EVAL_LENGTH:-32768}" \
  --eval_schemes=none,alibi \
  --implementations=auto --eval_memory_gib=16 --out="$out/accelerator-eval.json"

part blockwise 300 "${bench[@]}" --schemes=none,alibi --lengths="$lengths" \
  --implementations=blockwise --eval_lengths= --out="$out/accelerator-blockwise.json"
echo "== $(date +%T) done; figures in $out/accelerator-*.json and .log"
[ ${#failed[@]} = 0 ] || { echo "failed parts: ${failed[*]}"; exit 1; }
