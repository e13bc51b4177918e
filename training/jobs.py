"""Long work that a person watches and may stop: the progress bar every command line and the Space show, and the
cancel flag it checks between two items (`stop_when`), so a loop of the training code stops without a flag passed
through every call."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm


class Cancelled(Exception):
    """Long work stopped because whoever started it asked (see `stop_when`)."""


# The cancel flag of the work running in this context (set by `stop_when`): a context variable, so each thread,
# request or job sees only its own (space.lowpriority carries it into the thread that runs the work).
_STOP: ContextVar[threading.Event | None] = ContextVar("defect_xai_stop", default=None)


@contextmanager
def stop_when(event: threading.Event) -> Iterator[None]:
    """Within this block, `check_cancelled` (and so every progress bar, at its next step) raises Cancelled once
    `event` is set."""
    token = _STOP.set(event)
    try:
        yield
    finally:
        _STOP.reset(token)


def check_cancelled() -> None:
    """Raise Cancelled when the work running in this context has been asked to stop; call it between two items."""
    event = _STOP.get()
    if event is not None and event.is_set():
        raise Cancelled("cancelled")


class _Bar(tqdm):
    """tqdm that checks the cancel flag at every step."""

    def update(self, n=1):
        check_cancelled()
        return super().update(n)

    def __iter__(self):
        for item in super().__iter__():
            check_cancelled()
            yield item


def progress(items: Iterable | None, desc: str, total: int | None = None, unit: str = "img") -> tqdm:
    """A tqdm progress bar on stderr (the project's one style of progress on the command line; Gradio's
    track_tqdm shows the same bars in the app) that stops its loop with Cancelled under a set `stop_when` flag."""
    return _Bar(items, desc=desc, total=total, unit=unit, dynamic_ncols=True, file=sys.stderr)
