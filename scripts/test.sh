#!/usr/bin/env bash
# The test command of README.md: make a local virtual environment, install roofline with its test
# extras into it, lint (ruff) and type-check (mypy --strict; both pinned in the extras), run the suite. Safe to re-run: pip skips what is
# already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/python -m ruff check roofline tests benchmarks
.venv/bin/python -m mypy
.venv/bin/python -m pytest -q "$@"
bash scripts/wheel_check.sh
