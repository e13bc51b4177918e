"""Making and serving the Space: the catalogue, the door, the handlers and the page put together, and Gradio
launched with the production options (the tests launch it through the same `launch`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import gradio as gr
from starlette.middleware import Middleware

from space.admission import EVENTS, INTERNAL, Door
from space.admission_middleware import AdmissionMiddleware
from space.catalogue import Catalogue
from space.components import demo_cache_folder
from space.handlers import Handlers
from space.outputs import CacheSweeper, OutputFolder
from space.page import build_page
from space.parts import Parts
from space.settings import Settings
from xai.cores import usable_cores
from xai.explainers import slow_methods


@dataclass
class Space:
    """A built Space: the Blocks app and what it serves."""

    demo: gr.Blocks
    door: Door
    catalogue: Catalogue
    outputs: OutputFolder
    settings: Settings

    def event_of(self, fn_index: int | None) -> str:
        """The event (api_name) a queue join asks for; Gradio's own events share one name."""
        try:  # Gradio reads "3" and 3.0 as function 3: so does the door
            index = int(fn_index) if float(fn_index) == int(float(fn_index)) else None
        except (TypeError, ValueError, OverflowError):
            index = None
        fn = self.demo.fns.get(index) if index is not None else None
        name = getattr(fn, "api_name", None)
        return name if name in EVENTS else INTERNAL

    def launch_options(self) -> dict:
        """How the app is served: the door in front of every route, errors reach callers only as our own messages
        (gr.Error), uploads capped at what xai.io accepts, and sessions held in memory bounded."""
        door = Middleware(AdmissionMiddleware, door=self.door, event_of=self.event_of,
                          trusted_hops=self.settings.trusted_hops, upload_root=demo_cache_folder())
        return {"max_file_size": self.settings.max_upload_bytes, "show_error": False,
                "state_session_capacity": self.settings.sessions, "mcp_server": False,
                "app_kwargs": {"middleware": [door]}}

    def launch(self, **options):
        """Serve it (options such as server_port or prevent_thread_lock pass through to Gradio)."""
        settings = self.settings
        defaults = {"server_name": settings.server_name, "server_port": settings.server_port}
        return self.demo.launch(**{**defaults, **self.launch_options(), **options})


def create(settings: Settings, catalogue: Catalogue | None = None, build=None) -> Space:
    """The Space over `catalogue` (default: loaded from the settings' bundles); `build` is a category being built
    in the background (training.defaults.BackgroundBuild), shown until it is ready."""
    catalogue = catalogue or Catalogue.from_sources(settings.sources, settings.categories, settings.category_dir)
    outputs = OutputFolder(max_age_s=settings.cache_sweep[1])
    CacheSweeper([demo_cache_folder(), outputs.root], *settings.cache_sweep, settings.cache_bytes).start()
    door = Door(settings.limits, slow=slow_methods)
    handlers = Handlers(catalogue, Parts(catalogue), outputs, settings, build)
    return Space(build_page(handlers, catalogue, settings, door), door, catalogue, outputs, settings)


def start_default_build(catalogue: Catalogue, settings: Settings):
    """Build (or reuse, from the cache of an earlier start) the default categories the settings ask for, in the
    background, adding each to the catalogue when it is ready. Never passed off as a published bundle."""
    from training.defaults import BackgroundBuild, default_builds

    builds = default_builds(settings.build, settings.build_cache, settings.build_epochs, settings.build_elpv_size)
    return BackgroundBuild(builds, lambda folder, name: catalogue.add_source(str(folder), f"{name} (built here)")
                           ).start()


def main() -> None:
    """Serve the Space as configured by the environment."""
    cores = usable_cores()  # requests share the cores the container has, not the host's
    # FAISS's OpenMP threads: its setting holds per thread, and requests run on Gradio's worker threads, so the
    # default every thread starts with is set here, before FAISS is first loaded (unless the operator set it)
    os.environ.setdefault("OMP_NUM_THREADS", str(cores))
    import torch

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(cores)
    settings = Settings.from_env()
    catalogue = Catalogue.from_sources(settings.sources, settings.categories, settings.category_dir)
    if settings.bundles is None and not catalogue.inspectors and not settings.build:
        settings = replace(settings, build=("solar-cells",))  # a Space whose published bundles are out of reach
    build = start_default_build(catalogue, settings) if settings.build else None
    create(settings, catalogue, build).launch()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def serving(settings: Settings, catalogue: Catalogue | None = None, build=None,
            host: str = "127.0.0.1") -> Iterator[tuple[str, Space]]:
    """The Space launched on a free local port with the production options, closed after the block: how the tests
    and benchmarks serve it."""
    space = create(settings, catalogue, build)
    port = free_port(host)
    space.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://{host}:{port}", space
    finally:
        space.demo.close()
