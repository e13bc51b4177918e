#!/usr/bin/env bash
# Sets up the environment if needed, then runs the linter and the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
python -m pytest -q tests "$@"
