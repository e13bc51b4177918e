#!/usr/bin/env bash
# Sets up the environment if needed, fits the bottle anomaly detector into bundles/bottle and evaluates it.
# DATA=/path/to/mvtec/category overrides the data folder.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
data="${DATA:-../shared/data/mvtec_ad/bottle}"
name="$(basename "$data")"
python -m training.fit_patchcore --data "$data" --out "bundles/$name"
python -m training.evaluate --data "$data" --bundle "bundles/$name" --json "bundles/$name/eval.json"
