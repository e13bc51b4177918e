"""The Space's settings, read once: environment variables, the door's limits, the caps on categories made at run
time and on files. Everything else takes them from here (the page's text included), never from os.environ."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from space.admission import Limits
from space.batches import BatchLimits
from space.categories import CategoryLimits
from xai.io import MAX_BYTES

# The project's published bundles, pinned to a revision: a later push to the repos never changes what a running
# Space serves. Publish a new release with `training.publish --revision v2` and raise the pin here.
DEFAULT_REVISION = "v1"
DEFAULT_BUNDLES = f"defect-xai/mvtec-bottle@{DEFAULT_REVISION},defect-xai/elpv-solar-cells@{DEFAULT_REVISION}"


@dataclass(frozen=True)
class Settings:
    """How this Space runs."""

    bundles: str | None = None  # DEFECT_XAI_BUNDLES: folders or Hub ids; None: the published ones, or a build
    category_dir: str | None = None  # DEFECT_XAI_CATEGORY_DIR: categories made here are kept (listed: see
    # CategoryLimits.list_kept, DEFECT_XAI_LIST_KEPT)
    build: tuple[str, ...] = ()  # DEFECT_XAI_BUILD: default categories to build in the background, in order
    # ("solar-cells", "mvtec:FOLDER"); with no bundles reachable at all, solar-cells is built anyway
    build_cache: Path = Path.home() / ".cache" / "defect-xai" / "bundles"  # DEFECT_XAI_CACHE: where they go
    build_epochs: int = 3  # DEFECT_XAI_BUILD_EPOCHS: the heads' training schedule for built categories
    build_elpv_size: int = 224  # DEFECT_XAI_BUILD_ELPV_SIZE: the solar cells' input size
    server_name: str | None = None  # GRADIO_SERVER_NAME
    server_port: int | None = None  # GRADIO_SERVER_PORT
    on_space: bool = False  # SPACE_ID set: a Hugging Face Space, where Sign in with Hugging Face (OAuth) exists ...
    # DEFECT_XAI_TRUSTED_HOPS: proxies in front of the app that each append to x-forwarded-for; the caller is that
    # many entries from the right. A Space has one (its proxy appends the visitor's address; the socket's peer is
    # an internal 10.x address), so the default is 1 with SPACE_ID set and 0 (the socket's peer) elsewhere.
    trusted_hops: int = 0
    limits: Limits = field(default_factory=Limits)
    categories: CategoryLimits = field(default_factory=CategoryLimits)
    batch: BatchLimits = field(default_factory=BatchLimits)  # what one /detect_batch may hold
    max_upload_bytes: int = MAX_BYTES  # one uploaded file
    cache_sweep: tuple[int, int] = (300, 1800)  # every 5 min, delete uploads and returned files older than 30 min
    cache_bytes: int = 4 * 1024**3  # ... and then the oldest while they hold more than this (the uploads' budget)
    sessions: int = 10_000  # page sessions held in memory (a few kB each); new ones are rate-limited per caller

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Settings from the environment (os.environ unless given); `overrides` replace any field."""
        env = os.environ if env is None else env
        values = {
            "bundles": env.get("DEFECT_XAI_BUNDLES"),
            "category_dir": env.get("DEFECT_XAI_CATEGORY_DIR") or None,
            "server_name": env.get("GRADIO_SERVER_NAME") or None,
            "server_port": int(env["GRADIO_SERVER_PORT"]) if env.get("GRADIO_SERVER_PORT") else None,
            "on_space": bool(env.get("SPACE_ID")),
            "trusted_hops": int(bool(env.get("SPACE_ID"))),
        }
        if env.get("DEFECT_XAI_LIST_KEPT", "").lower() in ("1", "true", "yes"):
            values["categories"] = CategoryLimits(list_kept=True)
        if env.get("DEFECT_XAI_CACHE"):
            values["build_cache"] = Path(env["DEFECT_XAI_CACHE"])
        if env.get("DEFECT_XAI_BUILD"):
            values["build"] = tuple(s.strip() for s in env["DEFECT_XAI_BUILD"].split(",") if s.strip())
        for key, name in (("build_epochs", "DEFECT_XAI_BUILD_EPOCHS"), ("trusted_hops", "DEFECT_XAI_TRUSTED_HOPS"),
                          ("build_elpv_size", "DEFECT_XAI_BUILD_ELPV_SIZE")):
            if env.get(name):
                values[key] = int(env[name])
        return cls(**{**values, **overrides})

    @property
    def sources(self) -> str:
        """The bundles to serve: DEFECT_XAI_BUNDLES, else the published ones."""
        return DEFAULT_BUNDLES if self.bundles is None else self.bundles
