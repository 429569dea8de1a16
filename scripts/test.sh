#!/usr/bin/env bash
# Set up .venv with the test extras and run the test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh dev
# The report's browser test opens report.html in headless Chromium: Debian's chromium package,
# installed here when missing. Without it that test fails and says how to install it.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "scripts/test.sh: chromium is missing; installing it for the HTML report's browser test (apt-get install -y chromium)"
  if [ "$(id -u)" -eq 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(none); fi
  if [ "${as_root[0]:-}" = none ] || ! command -v apt-get >/dev/null 2>&1 \
     || ! { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
            || { "${as_root[@]}" apt-get update -qq >/dev/null 2>&1 \
                 && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; }; then
    echo "scripts/test.sh: could not install chromium (it needs apt-get and root or passwordless sudo);" \
         "the browser test will fail: install Debian's chromium package and rerun" >&2
  fi
fi
# Lint (ruff: pyflakes, pycodestyle, import order) and the Python 3.10 floor (vermin): pinned
# versions, configured in pyproject.toml
ruff check onedc scripts tests
vermin -q --no-tips -t=3.10- --violations --eval-annotations --exclude long onedc scripts tests
export ONEDC_REQUIRE_BROWSER=1
python -m pytest -q "$@"
