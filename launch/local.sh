#!/usr/bin/env bash
# One host, all its local devices.
#
#   launch/local.sh --config configs/pretrain.py:tiny --workdir runs/x [--config.x=y ...]
#   launch/local.sh evaluate --workdir runs/x [--lengths=...]               # evaluate a run
#   launch/local.sh experiments/extrapolation.py:cpu --out runs/study       # a whole study
#
# The first form runs `python -m lcx.train` with the flags given, the second `python -m
# lcx.evaluate` (likewise convert, longrope and drope: `python -m lcx.<that>`), and the third, whose first argument is a study (FILE.py:ARG), `python -m
# lcx.sweep`. PYTHON overrides the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
if [[ $# -ge 1 && "$1" == *.py:* ]]; then
  exec "$python" -m lcx.sweep "$@"
fi
case "${1:-}" in  # the one-host commands a study's stages run besides training
  evaluate|convert|longrope|drope) module=lcx.$1; shift; exec "$python" -m "$module" "$@" ;;
esac
exec "$python" -m lcx.train "$@"
