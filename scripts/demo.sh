#!/usr/bin/env bash
# README's main job on its embedded default: a roofline report for the built-in zoo:convnet model on
# this machine's detected hardware (measured on first use: --measure-hw), written to ./roofline-report/index.html.
# Calibrated: the measured profile carries this machine's efficiency per op class, alone and in a pass.
# Installs the model extras (torchvision, transformers) too, so README's torchvision: and hf: examples work after it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[models]'
.venv/bin/roofline report zoo:convnet --hw auto --measure-hw --calibrated --out roofline-report "$@"
