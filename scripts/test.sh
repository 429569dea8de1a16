#!/usr/bin/env bash
# Set up .venv with the test extras and run the test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh dev
python -m pytest -q "$@"
