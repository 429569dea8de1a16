#!/usr/bin/env bash
# Set up .venv and run the main job on the embedded default: the tiny OneDC codec on the
# scikit-image sample photos, on the CPU (outputs under outputs/quickstart/).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
python scripts/quickstart.py "$@"
