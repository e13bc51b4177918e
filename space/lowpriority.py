"""Run heavy work (fitting a category, training its head) in a thread of its own at the lowest CPU priority, so
that /detect and /explain keep their speed while it runs.

Linux gives every thread its own nice value, and the worker threads the thread's OpenMP and BLAS calls start
inherit it, so the work gets only the CPU time that requests leave over (docs/serving-in-public.md has the
measurement). A fresh thread each time: a pooled worker thread would keep its low priority for the requests it
serves next.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
LOWEST = 19


def run_low_priority(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) in a new thread at nice 19, waited for; its result or its exception comes back. The
    caller's context variables travel with it (Gradio's progress tracking and a cancel flag live there)."""
    context = contextvars.copy_context()
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST)
        except (AttributeError, OSError):  # not Linux: the work still runs, at normal priority
            pass
        try:
            outcome["result"] = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="low-priority", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
