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
# tests/test_browser.py opens a report in Chromium, from the OS packages (never a downloaded browser build).
command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null) ||
  echo "scripts/test.sh: could not install chromium chromium-driver; the browser tests need them" >&2
.venv/bin/python -m pytest -q "$@"
bash scripts/wheel_check.sh
