"""bundle.json as typed metadata: one dataclass for the top level and one per component, read through ordered,
versioned migration steps (`BundleMeta.from_json`) and written back as exactly its keys (`to_json`).

A bundle.json is data from whoever published it: reading is lenient (an absent key is None, an unknown one is kept
in `extra` and written back), and what a key must hold is checked where it is used (`xai.bundle`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from xai.errors import UserError
from xai.heads import HeadConfig
from xai.patchcore import PatchCoreConfig

FORMAT_VERSION = 2  # 2: PatchCore keeps the picture's aspect (format-1 detectors still load, square and exact)
WRITTEN = {"null": True}  # field metadata: the key is written even when it holds None (null)


class MetaError(UserError, ValueError):
    """A bundle.json whose structure cannot be read; the message says which part."""


def _read(cls, data: Any, **typed):
    """`cls` from the JSON object `data`: its fields' keys (`typed` ones already converted), the rest in `extra`."""
    if not isinstance(data, dict):
        raise MetaError(f"{cls.__name__} must be a JSON object, not {type(data).__name__}")
    names = {f.name for f in fields(cls)} - {"extra"}
    return cls(**{**{k: v for k, v in data.items() if k in names}, **typed},
               extra={k: v for k, v in data.items() if k not in names})


def _plain(value: Any) -> Any:
    """A value as JSON data: these dataclasses and the configs as their objects, containers copied."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list) else value


def _write(obj) -> dict:
    """The JSON object of one of these dataclasses: its fields in order (None ones only when WRITTEN), then extra."""
    out = {f.name: _plain(getattr(obj, f.name)) for f in fields(obj) if f.name != "extra"
           and (getattr(obj, f.name) is not None or f.metadata.get("null"))}
    return {**out, **_plain(obj.extra)}


class JsonObject:
    """What these dataclasses share: each is read from one JSON object and written back as its keys."""

    @classmethod
    def from_json(cls, data: dict):
        return _read(cls, data)

    def to_json(self) -> dict:
        return _write(self)


@dataclass
class ScoreModelMeta(JsonObject):
    """`components.patchcore.score_model`: the trees shap_features explains (xai.score_model), their facts."""

    weights: str | None = None
    properties: list[str] | None = None
    base_offset: float | None = None
    threshold: float | None = None
    reference: dict | None = None
    fidelity: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class PatchCoreMeta(JsonObject):
    """`components.patchcore`: the detector's settings, files, threshold and the evidence of its fit."""

    config: PatchCoreConfig = field(default_factory=PatchCoreConfig)
    weights: str | None = None
    index: str | None = None
    index_sha256: str | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    calibration: dict | None = None
    bank_images: list[str] | None = None
    border_scale: list[float] | None = None
    fit: dict | None = None
    choice: dict | None = field(default=None, metadata=WRITTEN)
    score_model: ScoreModelMeta | None = field(default=None, metadata=WRITTEN)
    reviews: dict | None = None  # xai.reviews.Reviews.to_meta, once the category has been taught
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> PatchCoreMeta:
        if not isinstance(data, dict) or "config" not in data:
            raise MetaError("the detector has no settings (config)")
        try:
            config = PatchCoreConfig.from_dict(data["config"])
        except (TypeError, ValueError, AttributeError) as exc:
            raise MetaError(f"its detector settings cannot be read ({exc})") from None
        stored = data.get("score_model")
        score_model = ScoreModelMeta.from_json(stored) if isinstance(stored, dict) else None
        return _read(cls, data, config=config, score_model=score_model)



@dataclass
class HeadMeta(JsonObject):
    """`components.classifier_cnn` / `classifier_vit`: a head's architecture, weights, classes and training."""

    config: HeadConfig
    weights: str | None = None
    labels: list[str] | None = None
    normal_index: int | None = field(default=None, metadata=WRITTEN)
    threshold: float | None = None
    threshold_rule: str | None = None
    training: dict | None = None
    feature_visualisation: dict | None = None  # the CNN head's (training.feature_visualisation)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> HeadMeta:
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise MetaError("a classifier has no architecture (config)")
        try:
            config = HeadConfig.from_dict(data["config"])
        except TypeError as exc:
            raise MetaError(f"a classifier's architecture cannot be read ({exc})") from None
        return _read(cls, data, config=config)



Component = PatchCoreMeta | HeadMeta


def component_kind(name: str) -> type[PatchCoreMeta] | type[HeadMeta]:
    """The dataclass of component `name`: the detector, or a classification head (`classifier_<arch>`)."""
    if name == "patchcore":
        return PatchCoreMeta
    if isinstance(name, str) and name.startswith("classifier_"):
        return HeadMeta
    raise MetaError(f"it names an unknown component ({name!r})")


@dataclass
class Preprocessing(JsonObject):
    """`preprocessing`: the heads' square input and how a picture is brought to it."""

    input_size: int | None = None
    resize: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class TrunkMeta(JsonObject):
    """`trunk`: the frozen backbone every component reads (xai.backbone.TRUNKS) and its weights' checksum."""

    name: str | None = None
    timm_name: str | None = None
    weights_package: str | None = None
    weights_sha256: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Example(JsonObject):
    """One entry of `examples`: a picture under examples/ with its true label (training.evaluate)."""

    file: str | None = None
    label: str | None = None
    source: str | None = None
    extra: dict = field(default_factory=dict)


def _from_format_1(data: dict) -> dict:
    """Format 1 -> 2: pictures squashed square. Its detector's config lacks keep_aspect, which is how
    PatchCoreConfig.from_dict recognises it and keeps it square and exact (xai.patchcore.CONFIG_MIGRATIONS)."""
    return {**data, "format_version": 2}


# Each step brings a bundle.json of the format it is keyed by to the next one, oldest first.
FORMAT_MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _from_format_1}


def migrate(data: dict) -> dict:
    """`data` (any format up to FORMAT_VERSION; none recorded: format 1) brought to FORMAT_VERSION."""
    version = data.get("format_version") or 1
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MetaError(f"bundle format {version!r} is newer than this defect-xai reads ({FORMAT_VERSION})")
    for step in range(version, FORMAT_VERSION):
        data = FORMAT_MIGRATIONS[step](data)
    return {**data, "format_version": FORMAT_VERSION}


@dataclass
class BundleMeta(JsonObject):
    """bundle.json: the category, its classes, preprocessing, trunk, data provenance, components and metrics.
    `thresholds` is not stored apart: it is written from the components' own thresholds."""

    format_version: int = FORMAT_VERSION
    components: dict[str, Component] = field(default_factory=dict)
    category: str | None = None
    labels: list[str] | None = None
    normal_label: str | None = field(default=None, metadata=WRITTEN)
    preprocessing: Preprocessing | None = None
    trunk: TrunkMeta | None = None
    data: dict | None = None
    metrics: dict | None = None
    examples: list[Example] | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> BundleMeta:
        """Typed metadata from a bundle.json of any format this version reads (MetaError otherwise)."""
        if not isinstance(data, dict):
            raise MetaError("bundle.json must hold a JSON object")
        data = migrate(data)
        stored = data.get("components") or {}
        if not isinstance(stored, dict):
            raise MetaError("its components must be a JSON object")
        typed = {"components": {name: component_kind(name).from_json(entry) for name, entry in stored.items()}}
        for key, kind in (("preprocessing", Preprocessing), ("trunk", TrunkMeta)):
            if data.get(key) is not None:
                typed[key] = kind.from_json(data[key])
        if data.get("examples") is not None:
            if not isinstance(data["examples"], list):
                raise MetaError("its examples must be a list")
            typed["examples"] = [Example.from_json(e) for e in data["examples"] if isinstance(e, dict)]
        return _read(cls, {k: v for k, v in data.items() if k != "thresholds"}, **typed)

    def to_json(self) -> dict:
        """bundle.json's keys, as every version of the training scripts wrote them; `thresholds` after `data`."""
        out = _write(self)
        late = {k: out.pop(k) for k in ("metrics", "examples", *self.extra) if k in out}
        return {**out, **({"thresholds": self.thresholds} if self.thresholds else {}), **late}

    @property
    def thresholds(self) -> dict[str, float]:
        """Component -> its decision threshold (the top-level `thresholds` key)."""
        return {name: comp.threshold for name, comp in self.components.items() if comp.threshold is not None}

    @property
    def patchcore(self) -> PatchCoreMeta | None:
        return self.components.get("patchcore")  # type: ignore[return-value]

    def head(self, component: str) -> HeadMeta | None:
        comp = self.components.get(component)
        return comp if isinstance(comp, HeadMeta) else None

    @property
    def input_size(self) -> int | None:
        """The heads' square input side every component of the bundle shares (None in a new bundle)."""
        return None if self.preprocessing is None else self.preprocessing.input_size
