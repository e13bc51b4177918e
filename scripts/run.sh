#!/usr/bin/env bash
# Sets up the environment if needed, builds the default bundles with the project's own training scripts when
# they are missing (no network: nothing is downloaded), then serves the app.
#   - bottle: MVTec AD bottle from ../shared/data (or DATA=/your/mvtec-layout/folder), when present
#   - solar cells: the elpv-dataset package
# DEFECT_XAI_BUNDLES, if set, is served as it is (folders or Hub repo ids) and nothing is built.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if [ -z "${DEFECT_XAI_BUNDLES:-}" ]; then
  EPOCHS="${EPOCHS:-8}"
  sources=()
  data="${DATA:-../shared/data/mvtec_ad/bottle}"
  if [ -d "$data" ]; then
    name="$(basename "$data")"
    if [ ! -f "bundles/$name/classifier_vit.safetensors" ]; then
      python -m training.fit_patchcore --data "$data" --out "bundles/$name"
      python -m training.train_classifier --data "$data" --out "bundles/$name" --epochs "$EPOCHS"
      python -m training.evaluate --data "$data" --bundle "bundles/$name" --json "bundles/$name/eval.json" >/dev/null
    fi
    sources+=("bundles/$name")
  fi
  if [ ! -f bundles/solar-cells/classifier_cnn.safetensors ]; then
    python -m training.fit_patchcore --layout elpv --out bundles/solar-cells --category solar-cells
    python -m training.train_classifier --layout elpv --out bundles/solar-cells --arch cnn --epochs "$EPOCHS"
    python -m training.evaluate --layout elpv --bundle bundles/solar-cells --json bundles/solar-cells/eval.json >/dev/null
  fi
  sources+=("bundles/solar-cells")
  DEFECT_XAI_BUNDLES="$(IFS=,; echo "${sources[*]}")"
  export DEFECT_XAI_BUNDLES
fi
echo "serving $DEFECT_XAI_BUNDLES" >&2
exec python app.py
