"""The bundle.json keys every training script writes: category, labels, preprocessing, trunk, data provenance."""

from __future__ import annotations

from pathlib import Path

from training.data import Dataset, write_split
from xai.backbone import TRUNKS, checkpoint_path, file_sha256
from xai.bundle import read_bundle_meta, write_meta
from xai.bundle_meta import BundleMeta, Preprocessing, TrunkMeta


def describe(out: Path, dataset: Dataset, trunk: str, input_size: int, category: str | None) -> BundleMeta:
    """Write the shared keys (and split.json) into `out`'s bundle.json; components stay as they are."""
    spec = TRUNKS[trunk]
    meta = read_bundle_meta(out)
    if meta.input_size is not None and meta.input_size != input_size:
        raise ValueError(f"{out} holds components trained at {meta.input_size} px; cannot add one at {input_size} px.")
    meta.category = category or meta.category or dataset.provenance.get("name") or Path(dataset.root).name
    meta.labels, meta.normal_label = dataset.labels, dataset.normal_label
    meta.preprocessing = Preprocessing(input_size, "bilinear, whole image, no crop", list(spec.mean), list(spec.std))
    meta.trunk = TrunkMeta(trunk, spec.timm_name, spec.weights_package.replace("_", "-"),
                           file_sha256(checkpoint_path(trunk)))
    meta.data = dataset.provenance
    write_meta(out, meta)
    write_split(dataset, out)
    return meta
