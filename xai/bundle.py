"""Bundles: one folder (or Hub model repo) holding bundle.json, safetensors weights, the FAISS index, a card.

`load(source)` takes a local folder or a Hub repo id (`org/name[@revision][/subfolder]`) and goes through
`huggingface_hub.snapshot_download`, so an offline, populated cache (`HF_HUB_OFFLINE=1`) works as on a Space.
Nothing here unpickles or parses untrusted binaries: tensors are safetensors, metadata is JSON, and the FAISS index
is rebuilt from the stored bank rather than read from the bundle's .faiss file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xai.bundle_meta import FORMAT_VERSION, BundleMeta, Example, HeadMeta, MetaError, PatchCoreMeta
from xai.errors import UserError

BUNDLE_JSON = "bundle.json"


class BundleError(UserError, RuntimeError):
    """A bundle that cannot be found or read; the message names it and says how to fix it."""


@dataclass
class Bundle:
    """A loaded bundle: its folder and its typed bundle.json (`metadata`)."""

    path: Path
    metadata: BundleMeta
    source: str = ""

    @property
    def category(self) -> str:
        return self.path.name if self.metadata.category is None else self.metadata.category

    @property
    def trunk_name(self) -> str:
        """The trunk (xai.backbone.TRUNKS) every component of this bundle was fitted on."""
        trunk = self.metadata.trunk
        return "efficientnet_lite0" if trunk is None or trunk.name is None else trunk.name

    def components(self) -> list[str]:
        return list(self.metadata.components)

    def inside(self, name: str) -> Path | None:
        """`name` resolved inside the bundle folder, or None when it points outside it (an absolute path, `..`
        or a link out): bundle.json is data from whoever published the bundle, never a licence to read the
        server's files."""
        root = self.path.resolve()
        path = (root / name).resolve()
        return path if path == root or root in path.parents else None

    def file(self, name: str) -> Path:
        if not isinstance(name, str):
            raise BundleError(f"Bundle {self.source or self.path} names no file where its bundle.json needs one.")
        path = self.inside(name)
        if path is None:
            raise BundleError(f"Bundle {self.source or self.path} names a file outside its folder ({name!r}).")
        if not path.is_file():
            raise BundleError(
                f"Bundle {self.source or self.path} lacks {name}; re-run the training script that writes it.")
        return path

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.file(name)))

    def examples(self) -> list[tuple[Path, str]]:
        """The example pictures `training.evaluate` stored (file, true label); those missing are skipped."""
        found = [(self.inside(str(e.file or "")), e.label or "") for e in self.metadata.examples or []]
        return [(path, label) for path, label in found if path is not None and path.is_file()]


def parse_source(source: str) -> tuple[str, str | None, str | None]:
    """`org/name[@revision][/sub/folder]` -> (repo_id, revision, subfolder)."""
    match = re.fullmatch(r"([\w.-]+/[\w.-]+?)(?:@([\w./-]+?))?(?:/([\w./-]+))?", source.strip())
    if not match:
        raise BundleError(f"{source!r} is neither a local bundle folder nor a Hub repo id like org/name[@rev][/sub].")
    repo_id, revision, subfolder = match.groups()
    if revision and "/" in revision and subfolder is None:
        revision, subfolder = revision.split("/", 1)
    return repo_id, revision, subfolder


def resolve(source: str | Path, revision: str | None = None, subfolder: str | None = None) -> tuple[Path, str]:
    """Local folder for `source`: the folder itself, or a Hub snapshot fetched (or found offline) by huggingface_hub."""
    local = Path(source)
    if local.is_dir():
        folder = local / subfolder if subfolder else local
        return folder, str(folder)
    repo_id, parsed_rev, parsed_sub = parse_source(str(source))
    revision, subfolder = revision or parsed_rev, subfolder or parsed_sub
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    label = repo_id + (f"@{revision}" if revision else "") + (f"/{subfolder}" if subfolder else "")
    try:
        snapshot = snapshot_download(repo_id, revision=revision,
                                     allow_patterns=[f"{subfolder}/**"] if subfolder else None)
    except LocalEntryNotFoundError:
        raise BundleError(
            f"Bundle {label} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(offline or HF_HUB_OFFLINE=1). Connect and retry, or build it with training.fit_patchcore "
            "and point DEFECT_XAI_BUNDLES at the folder."
        ) from None
    except RepositoryNotFoundError:
        raise BundleError(f"Hub repo {repo_id} does not exist or is private (set HF_TOKEN if it is yours).") from None
    except HfHubHTTPError as exc:
        raise BundleError(f"Could not download bundle {label}: {exc}.") from None
    folder = Path(snapshot) / subfolder if subfolder else Path(snapshot)
    return folder, label


def load(source: str | Path, revision: str | None = None, subfolder: str | None = None) -> Bundle:
    """Open a bundle from a local folder or the Hub (see module docstring); weights load lazily."""
    folder, label = resolve(source, revision, subfolder)
    meta_path = folder / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(f"{label} is not a defect-xai bundle: it has no {BUNDLE_JSON}.")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{label}/{BUNDLE_JSON} is not valid JSON ({exc}).") from None
    if isinstance(meta, dict) and meta.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(f"{label} has bundle format {meta['format_version']}; upgrade defect-xai to read it.")
    try:
        return Bundle(folder, BundleMeta.from_json(meta), label)
    except MetaError as exc:
        raise BundleError(f"Bundle {label}: {exc}.") from None


def read_meta(folder: Path) -> dict:
    """bundle.json of a bundle being written, as raw keys (an empty skeleton for a new folder)."""
    path = folder / BUNDLE_JSON
    return json.loads(path.read_text()) if path.is_file() else {"format_version": FORMAT_VERSION, "components": {}}


def read_bundle_meta(folder: Path) -> BundleMeta:
    """The typed bundle.json of a bundle being written (an empty one for a new folder)."""
    return BundleMeta.from_json(read_meta(folder))


def write_meta(folder: Path, meta: BundleMeta | dict) -> None:
    """bundle.json written whole (a partial file then a rename: a reader never sees half of it)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = meta.to_json() if isinstance(meta, BundleMeta) else meta
    partial = folder / f".{BUNDLE_JSON}.{secrets.token_hex(4)}"
    partial.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(partial, folder / BUNDLE_JSON)


def save_tensors(folder: Path, name: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / name),
              metadata={k: str(v) for k, v in (metadata or {}).items()})


# -- the PatchCore component ---------------------------------------------------------------------
PATCHCORE_WEIGHTS = "patchcore.safetensors"
PATCHCORE_INDEX = "patchcore.faiss"
RETRIEVAL_DIR = "retrieval"
EXAMPLES_DIR = "examples"
EXAMPLE_SIDE = 512


def save_examples(folder: Path, meta: BundleMeta, examples: list[tuple[Path, str]]) -> None:
    """Copy test pictures into `examples/` (JPEG, at most EXAMPLE_SIDE px) and list them in `meta`: the app's
    examples then travel with the bundle instead of being committed anywhere."""
    from xai.io import load_image

    out = folder / EXAMPLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    listed = []
    for i, (path, label) in enumerate(examples):
        picture = load_image(path)
        picture.thumbnail((EXAMPLE_SIDE, EXAMPLE_SIDE))
        name = f"{EXAMPLES_DIR}/{i:02d}_{''.join(c if c.isalnum() else '_' for c in label)}.jpg"
        picture.save(folder / name, "JPEG", quality=90)
        listed.append(Example(name, label, Path(path).name))
    meta.examples = listed


def thumbnail_name(index: int) -> str:
    """File name (under retrieval/) of bank image `index`, at model input size."""
    return f"{index:05d}.jpg"


def save_patchcore(folder: Path, model, info: dict) -> None:
    """Write the detector's tensors and FAISS index and register it (config + `info`) in bundle.json."""
    import faiss

    save_tensors(folder, PATCHCORE_WEIGHTS, {
        "layer_scales": model.layer_scales, "memory_bank": model.memory_bank, "bank_source": model.bank_source,
        "image_features": model.image_features, "border_scale": model.border_scale,
    })
    model.ensure_index()
    faiss.write_index(model.index, str(folder / PATCHCORE_INDEX))
    meta = read_bundle_meta(folder)
    meta.components["patchcore"] = PatchCoreMeta.from_json({
        "config": model.config.to_dict(), "weights": PATCHCORE_WEIGHTS, "index": PATCHCORE_INDEX,
        "index_sha256": _sha256(folder / PATCHCORE_INDEX), **info,
    })
    write_meta(folder, meta)


def load_patchcore(bundle: Bundle):
    """The bundle's PatchCore model, its FAISS index rebuilt from the stored bank."""
    from xai.patchcore import PatchCore

    spec = bundle.metadata.patchcore
    if spec is None:
        raise BundleError(f"Bundle {bundle.source} has no anomaly detector; run training.fit_patchcore on it.")
    config = replace(spec.config)  # the model's own copy: changing it leaves the metadata as stored
    problems = config.problems()
    if problems:
        raise BundleError(f"Bundle {bundle.source}: detector settings out of range: {'; '.join(problems)}.")
    tensors = bundle.tensors(spec.weights)
    if tensors["layer_scales"].shape != (config.n_parts,) or tensors["memory_bank"].ndim != 2:
        raise BundleError(f"Bundle {bundle.source}: the detector's tensors do not match its settings; refit it.")
    model = PatchCore(config, tensors["layer_scales"],
                      tensors["memory_bank"], tensors["bank_source"], tensors.get("image_features"),
                      tensors.get("border_scale"))
    # The index is rebuilt from the safetensors bank (the same seeded build as at fit time: milliseconds for an
    # exact index, a second or two for IVF on 100k patches) instead of parsing the .faiss file with FAISS's C++
    # reader: a bundle is data from whoever published it, and its checksum in bundle.json would come from the
    # same hands. The file stays in the bundle for other tools, with its SHA-256 in bundle.json.
    model.ensure_index()
    if model.index.ntotal != len(model.memory_bank):
        raise BundleError(f"Bundle {bundle.source}: the memory bank could not be indexed; refit it.")
    return model


def _sha256(path: Path) -> str:
    from xai.backbone import file_sha256

    return file_sha256(path)


# -- classifier heads ----------------------------------------------------------------------------
def save_head(folder: Path, component: str, head, info: dict) -> None:
    """Write a classification head's weights (`<component>.safetensors`) and register it in bundle.json."""
    weights = f"{component}.safetensors"
    save_tensors(folder, weights, head.state_dict())
    meta = read_bundle_meta(folder)
    meta.components[component] = HeadMeta.from_json({"config": head.config.to_dict(), "weights": weights, **info})
    write_meta(folder, meta)


def load_head(bundle: Bundle, component: str):
    """Rebuild a head from its config in bundle.json and load its safetensors strictly, in eval mode."""
    from xai.heads import create_head

    spec = bundle.metadata.head(component)
    if spec is None:
        raise BundleError(f"Bundle {bundle.source} has no {component}; run training.train_classifier on it.")
    head = create_head(replace(spec.config))
    head.load_state_dict(bundle.tensors(spec.weights), strict=True)
    return head.eval()


def load_score_model(bundle: Bundle):
    """The detector's score model (xai.score_model) when its fit made one, else None."""
    from xai.score_model import ScoreModel

    detector = bundle.metadata.patchcore
    spec = None if detector is None else detector.score_model
    if spec is None:
        return None
    try:
        return ScoreModel.from_stored(bundle.tensors(spec.weights), spec.to_json())
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"Bundle {bundle.source}: its score model cannot be read ({exc}); refit the detector."
                          ) from None
