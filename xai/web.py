"""What a public Space needs beyond the model: inputs that accept only uploaded files, a cap on what one caller
may have running, and errors that help without leaking. Imported by app.py only (it imports Gradio).

Why each exists: Gradio downloads a file input given as a URL inside the worker slot, with no size limit, before
our code runs; every event, private ones included, can be called through the queue by anyone; and an unexpected
exception's text can carry server paths.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio import utils as gradio_utils
from gradio_client import utils as client_utils

LOG = logging.getLogger("defect_xai")
ONLY_UPLOADS = ("Only files uploaded to this server are accepted: send the picture itself (gradio_client: "
                "handle_file with a local path), not a URL or a server path.")


class UploadedOnly:
    """Mixin for file-taking input components: a URL, a data: URL or a path outside Gradio's upload cache is
    refused before Gradio would download or copy it (this hook runs for every route, before preprocessing).
    Input components only: Gradio calls the same hook on outputs."""

    def _gradio_component(self) -> type:
        return next(c for c in type(self).__mro__ if c.__module__.startswith("gradio."))

    def get_block_name(self) -> str:  # the page renders it with its Gradio parent's Svelte component
        return self._gradio_component().__name__.lower()

    def get_block_class(self) -> str:
        return self._gradio_component().__name__.lower()

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        path = None if url_or_file_path is None else str(url_or_file_path)
        if path is not None and (client_utils.is_http_url_like(path) or path.startswith("data:")
                                 or not gradio_utils.is_in_or_equal(path, self.GRADIO_CACHE)):
            raise gr.Error(ONLY_UPLOADS, print_exception=False)
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class UploadedFile(UploadedOnly, gr.File):
    """gr.File that takes only uploaded files."""


class UploadedImage(UploadedOnly, gr.Image):
    """gr.Image that takes only uploaded files."""


@dataclass(frozen=True)
class Limits:
    """What one caller may cost (configs as data; tests and benchmarks that play many clients from one address
    raise them)."""

    detect_per_caller: int = 2  # /detect calls one caller may have running (4 run at once in all) ...
    detect_burst: int = 15  # ... and may start at once (a burst holds others back by burst x detect cost: 30 at the
    # 224 view, halved when the detector's 320 view doubled that cost; a flood made another caller wait 21.6 s) ...
    detect_every_s: float = 0.25  # ... then one every this many seconds (a queue flood drains in microseconds)
    explain_burst: int = 6  # explanation requests one caller may start at once ...
    explain_every_s: float = 10.0  # ... then one every this many seconds
    fit_per_caller: int = 1  # fits (and classifier trainings) one caller may have queued or running ...
    fit_burst: int = 4  # ... and may start at once ...
    fit_every_s: float = 60.0  # ... then one every this many seconds
    fit_queue: int = 8  # fits and trainings waiting in all (one runs at a time); more are refused as they queue


def demo_cache_folder() -> str:
    """Where Gradio keeps uploads and returned files (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    return gradio_utils.get_upload_folder()


def client_key(request: gr.Request | None) -> str:
    """Who is calling, for per-caller limits. On a Hugging Face Space (SPACE_ID set) the rightmost
    x-forwarded-for entry, which the Space's proxy appends and a client cannot forge; elsewhere the socket's
    peer, since any client can send that header. Never the session hash, which the client chooses."""
    if request is None:
        return "local"
    if os.environ.get("SPACE_ID"):
        forwarded = (request.headers or {}).get("x-forwarded-for", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        if hops:
            return hops[-1]
    return getattr(getattr(request, "client", None), "host", None) or "unknown"


class CallerLimit:
    """At most `per_caller` requests of one caller running at once; the next one is refused with a message
    instead of waiting, so one caller cannot hold every worker."""

    def __init__(self, per_caller: int):
        self.per_caller = per_caller
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def running(self, key: str) -> int:
        return self._running.get(key, 0)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            if self._running.get(key, 0) >= self.per_caller:
                raise gr.Error(f"You already have {self.per_caller} request(s) of this kind running; wait for "
                               "them to finish.", print_exception=False)
            self._running[key] = self._running.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._running[key] -= 1
                if not self._running[key]:
                    del self._running[key]


class CallerRate:
    """A token bucket per caller: `burst` requests at once, then one every `every_s` seconds. Checked when a
    request starts, so a caller who queues thousands of them is refused in microseconds each and the queue
    drains for everyone else."""

    def __init__(self, burst: int, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.burst, self.every_s, self.clock = burst, every_s, clock
        self._tokens: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            tokens, when = self._tokens.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) / self.every_s)
            if tokens < 1.0:
                wait = (1.0 - tokens) * self.every_s
                raise gr.Error(f"Too many requests of this kind from you; try again in {wait:.0f} s.",
                               print_exception=False)
            self._tokens[key] = (tokens - 1.0, now)
            if len(self._tokens) > 10_000:  # forget callers whose bucket has refilled
                full = [k for k, (t, w) in self._tokens.items() if t + (now - w) / self.every_s >= self.burst]
                for k in full:
                    del self._tokens[k]


class CacheSweeper:
    """Deletes files older than `age_s` under `folders` every `every_s` seconds, in a daemon thread: every
    upload and every returned picture lands in Gradio's cache and nothing else removes it. (Gradio's own
    delete_cache iterates a set that requests are adding to, and its task dies at the first collision:
    "Set changed size during iteration", seen in the soak run.)"""

    def __init__(self, folders: list[str | os.PathLike], every_s: float, age_s: float):
        self.folders, self.every_s, self.age_s = [Path(f) for f in folders], every_s, age_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-sweeper", daemon=True)

    def start(self) -> CacheSweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sweep()
            except Exception:  # never let a sweep failure stop the next one
                LOG.exception("cache sweep failed")

    def sweep(self) -> int:
        """Delete what is older than age_s (and folders left empty); returns how many files went."""
        cutoff = time.time() - self.age_s
        gone = 0
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                try:
                    if path.is_file() or path.is_symlink():
                        if path.lstat().st_mtime < cutoff:
                            path.unlink()
                            gone += 1
                    elif path.is_dir() and not any(path.iterdir()) and path.stat().st_mtime < cutoff:
                        path.rmdir()
                except (FileNotFoundError, OSError):
                    continue
        return gone


def guarded(expected: tuple[type[BaseException], ...]) -> Callable:
    """Decorator: expected failures become gr.Error with their message; anything else is logged with its trace
    under a short id and reaches the caller as one line with that id (nothing of its text or paths)."""
    def wrap(fn):
        @functools.wraps(fn)  # keeps the signature: Gradio reads it to inject gr.Progress and gr.Request
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except expected as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            except Exception:
                error_id = uuid.uuid4().hex[:8]
                LOG.exception("request failed [%s] in %s", error_id, fn.__name__)
                raise gr.Error(f"Something went wrong on the server (error id {error_id}); the request was not "
                               "completed. Please try again or report the id.", print_exception=False) from None
        return wrapped
    return wrap
