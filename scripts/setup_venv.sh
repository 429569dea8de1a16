#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv at the repository root and install onedc
# into it, editable, with the extras given as $1 (e.g. "dev"). Nothing but Python 3.10+ is
# needed beforehand. Usage: source scripts/setup_venv.sh [extras]
set -euo pipefail
ONEDC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ONEDC_VENV="${ONEDC_VENV:-$ONEDC_ROOT/.venv}"
extras="${1:-}"
spec="$ONEDC_ROOT"
[ -n "$extras" ] && spec="$ONEDC_ROOT[$extras]"
if [ ! -x "$ONEDC_VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$ONEDC_VENV"
  "$ONEDC_VENV/bin/python" -m pip install --quiet --upgrade pip
fi
# Reinstall only when pyproject.toml or the extras changed since the last install.
stamp="$ONEDC_VENV/.onedc-install-$(cat "$ONEDC_ROOT/pyproject.toml" <(echo "$extras") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # setuptools warns about every editable install ("be careful with folders ... same name as
  # your package"): nothing to act on here, so it is not shown
  PYTHONWARNINGS="ignore:Editable installation" "$ONEDC_VENV/bin/python" -m pip install --quiet --progress-bar off -e "$spec"
  rm -f "$ONEDC_VENV"/.onedc-install-*
  touch "$stamp"
fi
export PATH="$ONEDC_VENV/bin:$PATH"
