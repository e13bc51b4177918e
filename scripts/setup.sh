#!/usr/bin/env bash
# Creates (once) and activates the project's virtual environment; sourced by run.sh and test.sh.
# The venv lives outside the checkout, keyed by the requirements' hash, so repeated runs reuse it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
key=$(cat "$here/requirements.txt" "$here/requirements-ray.txt" "$here/requirements-dev.txt" | sha256sum | cut -c1-12)
venv="${DEFECT_XAI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/defect-xai/venv-$key}"
if [ ! -f "$venv/.installed" ]; then
  echo "setting up $venv (one time, about 2-3 minutes) ..." >&2
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$here/requirements-dev.txt"
  touch "$venv/.installed"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
cd "$here"
