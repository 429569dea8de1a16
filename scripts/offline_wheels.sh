#!/usr/bin/env bash
# Wheels to install onedc on a machine without internet that already has the PyTorch stack (a
# cluster node, a CUDA container): onedc's own wheel and those of its pure-Python dependencies
# that such images usually lack, each at the version installed in this environment (so both
# machines run the same library code). Run it here, in the checkout, with the project's python.
#
# Usage: [PYTHON=...] bash scripts/offline_wheels.sh DIR [NAME ...]
#   NAME: distributions to fetch instead of the default list below (pure-Python ones only).
#   PYTHON: the environment whose versions are pinned; default .venv/bin/python (what
#   scripts/setup_venv.sh makes) where it exists, else python.
# On the offline machine:
#   python3 -m pip install --no-index --no-deps --target SITE DIR/*.whl
#   export PYTHONPATH=SITE PYTHONSAFEPATH=1
# PYTHONSAFEPATH keeps the checkout's folder off the import path, so `python -m ...` run in the
# checkout imports the installed onedc (the checkout's configs/ becomes onedc.configs only when
# installed). The machine's own torch, numpy, numba, transformers, peft, accelerate, safetensors,
# scipy, scikit-image, torchmetrics and matplotlib are used as they are: check their versions
# against pyproject.toml's floors.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: bash scripts/offline_wheels.sh DIR [NAME ...]}
shift
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python}; fi
NAMES=("$@")
if [ ${#NAMES[@]} -eq 0 ]; then
  NAMES=(diffusers hydra-core omegaconf antlr4-python3-runtime hydra-submitit-launcher submitit
         lpips DISTS-pytorch pytorch-fid torch-fidelity pytorch-msssim)
fi
mkdir -p "$DIR"
pins=()
for name in "${NAMES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") \
    || { echo "offline_wheels.sh: $name is not installed in $PY's environment (scripts/setup_venv.sh installs onedc's)" >&2; exit 1; }
  pins+=("$name==$version")
done
# pip wheel takes a published wheel where there is one and builds the others (antlr4's 4.9.3 is
# a source distribution). onedc's own wheel is built from a clean copy of the checkout's tracked
# files, uncommitted edits included (an in-place build would leave build/ here, whose stale
# files a later build can package)
source=$(mktemp -d)
trap 'rm -rf "$source"' EXIT
tree=$(git stash create)  # a commit of the uncommitted edits; empty when there are none
git archive --format=tar "${tree:-HEAD}" | tar -x -C "$source"
"$PY" -m pip wheel -q --no-deps -w "$DIR" "${pins[@]}" "$source"
platform=$(find "$DIR" -name '*.whl' ! -name '*-none-any.whl')
if [ -n "$platform" ]; then
  echo "offline_wheels.sh: not pure-Python, built for this machine only: $platform" >&2
  exit 1
fi
echo "offline_wheels.sh: $(find "$DIR" -name '*.whl' | wc -l) wheels in $DIR ($(du -sh "$DIR" | cut -f1)): ${pins[*]} onedc"
