#!/usr/bin/env bash
# The GPU validation run of issue 16 (see benchmarks/gpu_validation.py): under 8 minutes on one NVIDIA GPU.
#   bash benchmarks/gpu_validation.sh                     # --device cuda, results in benchmarks/results/
#   bash benchmarks/gpu_validation.sh --device cpu --quick --out /tmp/x   # the CPU path the test suite runs
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
exec "$python" benchmarks/gpu_validation.py "$@"
