"""The bundle.json keys every training script writes: category, labels, preprocessing, trunk, data provenance."""

from __future__ import annotations

from pathlib import Path

from training.data import Dataset, write_split
from xai.backbone import TRUNKS, checkpoint_path, file_sha256
from xai.bundle import read_meta, write_meta


def describe(out: Path, dataset: Dataset, trunk: str, input_size: int, category: str | None,
             threshold: tuple[str, float] | None = None) -> dict:
    """Write the shared keys (and split.json) into `out`'s bundle.json; components stay as they are."""
    spec = TRUNKS[trunk]
    meta = read_meta(out)
    recorded = meta.get("preprocessing", {}).get("input_size")
    if recorded is not None and recorded != input_size:
        raise ValueError(f"{out} holds components trained at {recorded} px; cannot add one at {input_size} px.")
    meta.update({
        "category": category or meta.get("category") or dataset.provenance.get("name") or Path(dataset.root).name,
        "labels": dataset.labels,
        "normal_label": dataset.normal_label,
        "preprocessing": {"input_size": input_size, "resize": "bilinear, whole image, no crop",
                          "mean": list(spec.mean), "std": list(spec.std)},
        "trunk": {"name": trunk, "timm_name": spec.timm_name,
                  "weights_package": spec.weights_package.replace("_", "-"),
                  "weights_sha256": file_sha256(checkpoint_path(trunk))},
        "data": dataset.provenance,
    })
    if threshold is not None:
        meta.setdefault("thresholds", {})[threshold[0]] = threshold[1]
    write_meta(out, meta)
    write_split(dataset, out)
    return meta
