#!/usr/bin/env bash
# Sets up the environment if needed (Python venv; Debian's chromium for the browser test), then runs the
# linter and the whole test suite.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test ..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "chromium could not be installed; the browser test will be skipped" >&2
fi
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
python -m pytest -q tests "$@"
