"""The door's rules: one table (event -> class -> rule) and the bookkeeping that admits or refuses each event of
the Space, public or private, as it *joins* the queue. Pure: `space.admission_middleware` feeds it the requests.

Why at the join: a check made when a job starts lets one caller fill the shared queue with jobs waiting behind a
long one, and a request's body is held in memory from its join until its job ends. So the door bounds, per caller
and event class, the jobs queued or running and a token-bucket rate, and per caller, a share of the whole queue
(docs/serving-in-public.md has the measurements).
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from xai.errors import UserError

ONLY_UPLOADS = ("Only files uploaded to this server are accepted: send the picture itself (gradio_client: "
                "handle_file with a local path), not a URL or a server path.")


class Refused(UserError):
    """A request the door turns away; the message says why and when to try again."""


@dataclass(frozen=True)
class Rule:
    """What one event class may cost (configs as data)."""

    concurrency: int  # jobs of the class running at once, in all (Gradio's concurrency limit)
    per_caller: int | None  # jobs of the class one caller may have queued or running (None: not counted)
    burst: int  # jobs one caller may start at once ...
    every_s: float  # ... then one every this many seconds (token bucket)
    waiting: int | None = None  # jobs of the class waiting in all (None: only the queue's size bounds it)
    forget_s: float = 120.0  # a queued job that never starts (its caller left) stops counting after this


RULES: dict[str, Rule] = {
    # detect: a burst holds others back by burst x a detect's cost, so the burst stays small
    "detect": Rule(concurrency=4, per_caller=4, burst=15, every_s=0.25),
    # explanations: three run at once, of which one slow (SHAP and occlusion run the model many times; see
    # Catalogue.slow_lane), so a fast one never waits behind another caller's slow ones
    "explain": Rule(concurrency=3, per_caller=2, burst=6, every_s=10.0, forget_s=600.0),
    # a request with a slow method counts here instead: one per caller queued or running
    "explain_slow": Rule(concurrency=1, per_caller=1, burst=3, every_s=20.0, forget_s=600.0),
    # page bookkeeping and /info: cheap, but one caller still gets a few at a time
    "info": Rule(concurrency=8, per_caller=4, burst=60, every_s=0.1),
    # fits and classifier trainings: two at once, one per caller, so one caller's fit (up to its 300 s budget) never
    # makes another visitor's wait; both run at the lowest CPU priority, and /detect keeps its speed
    "fit": Rule(concurrency=2, per_caller=1, burst=4, every_s=60.0, waiting=8, forget_s=1800.0),
    # many pictures at once (seconds to a minute, at low priority): one at a time in all, one per caller
    "batch": Rule(concurrency=1, per_caller=1, burst=3, every_s=30.0, waiting=8, forget_s=600.0),
    # a category's bundle as a zip (seconds), and publishing it to the Hub (seconds of upload)
    "download": Rule(concurrency=2, per_caller=1, burst=6, every_s=10.0, forget_s=600.0),
    "publish": Rule(concurrency=1, per_caller=1, burst=6, every_s=10.0, forget_s=600.0),
    # reviews and the sensitivity (a detect and a bank update, well under a second): one a second per caller
    "feedback": Rule(concurrency=2, per_caller=1, burst=2, every_s=1.0),
    # Gradio's own events (an example's inputs filled in): no job of ours, a rate only
    "internal": Rule(concurrency=8, per_caller=None, burst=30, every_s=0.2),
}
INTERNAL = "gradio_internal"  # the event name the door gives every event that is not one of the Space's

# Every event of the Space (api_name) and its class; an event missing here is refused (tests check the page's).
EVENTS: dict[str, str] = {
    "detect": "detect", "ui_detect": "detect", "detect_batch": "batch", "ui_detect_batch": "batch",
    "explain": "explain", "ui_explain": "explain", "ui_download": "download",
    "info": "info", "ui_category": "info", "ui_cancel": "info", "cancel_training": "info",
    "ui_build_status": "info",
    "fit": "fit", "ui_fit": "fit", "train_classifier": "fit", "ui_train": "fit",
    "ui_publish": "publish", "feedback": "feedback", "undo_feedback": "feedback", "sensitivity": "feedback",
    "ui_feedback_good": "feedback", "ui_feedback_defect": "feedback", "ui_undo_feedback": "feedback",
    "ui_sensitivity": "feedback", "ui_reviews": "info", INTERNAL: "internal",
}


@dataclass(frozen=True)
class Limits:
    """The door's table and its global caps; `relaxed` gives tests and benchmarks (many clients from one
    address) higher limits for some classes."""

    rules: Mapping[str, Rule] = field(default_factory=lambda: dict(RULES))
    caller_share: int = 16  # jobs of all classes one caller may have queued or running (a share of queue_size)
    queue_size: int = 256  # jobs queued in all (Gradio's max_size)
    body_bytes: int = 1 << 20  # a request's body (uploads go to their own route, capped by max_file_size)
    # page sessions one caller may open: a few at once, then one every few seconds, so that no caller can push
    # every visitor's page state out of Gradio's bounded session store
    session_burst: int = 20
    session_every_s: float = 3.0
    # uploads, counted over the window in which the cache sweeper may still hold them on disk: one caller's (a fit
    # may send 200 MB), and everyone's together (what the disk holds)
    upload_window_s: float = 1800.0
    upload_per_caller: int = 256 << 20
    upload_total: int = 4 << 30

    @classmethod
    def loopback(cls) -> Limits:
        """Limits for benchmarks that play many visitors from one address: every per-caller cap and rate lifted,
        how many run at once kept (what the measurements are about)."""
        open_rules = {name: replace(rule, per_caller=None, burst=10**9, every_s=1e-9) for name, rule in RULES.items()}
        return cls(rules=open_rules, caller_share=10**9, upload_per_caller=1 << 50, upload_total=1 << 50,
                   session_burst=10**9, session_every_s=1e-9)

    def relaxed(self, **classes: dict) -> Limits:
        """These limits with some fields of some classes changed: relaxed(detect={"burst": 1000})."""
        return replace(self, rules={**self.rules, **{name: replace(self.rules[name], **changes)
                                                     for name, changes in classes.items()}})

    def rule(self, event: str) -> Rule:
        return self.rules[EVENTS[event]]


CLASS_TWINS = {"explain": ("explain_slow",), "explain_slow": ("explain",)}


def job_class(event: str, data, slow: Callable[[], list[str]]) -> str:
    """The class a job counts in: its event's, except an explanation asking for a slow method (its arguments by
    position, or by name as Gradio's /call/v2 takes them)."""
    cls = EVENTS[event]
    if cls != "explain":
        return cls
    if isinstance(data, dict):
        asked = data.get("method", data.get("methods"))
    else:
        asked = data[2] if isinstance(data, list) and len(data) >= 3 else None
    asked = asked if isinstance(asked, list) else [asked]
    slow_ones = set(slow())
    return "explain_slow" if any(isinstance(m, str) and m in slow_ones for m in asked) else cls


def only_uploaded(payload: object, upload_root: Path) -> None:
    """Refuse (Refused) a request whose file arguments are not files uploaded here (a URL, a data: URL, a server
    path outside `upload_root`): Gradio would download or copy them, or answer naming the server's folders."""
    stack: list = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            if isinstance(path, str) and not _uploaded(path, upload_root):
                raise Refused(ONLY_UPLOADS)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _uploaded(path: str, upload_root: Path) -> bool:
    if "://" in path or path.startswith("data:"):
        return False
    return Path(os.path.abspath(path)).resolve().is_relative_to(upload_root)


def caller_key(host: str | None, headers: Mapping[str, str], trusted_hops: int) -> str:
    """Who is calling, for per-caller limits. Behind `trusted_hops` proxies that each append the address they were
    reached from to x-forwarded-for, the caller is the entry that many from the right (a client may write anything
    to the left of it, never there); with 0, the socket's peer, since any client can send that header. Never the
    session hash, which the client chooses."""
    if trusted_hops > 0:
        hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
        if hops:  # fewer entries than proxies: the farthest a trusted proxy wrote
            return _network(hops[-min(trusted_hops, len(hops))])
    return _network(host) if host else "unknown"


def _network(address: str) -> str:
    """An IPv6 caller is its /64 (one subscriber's block: rotating through it must not make a new caller)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


class CallerRate:
    """A token bucket per caller: `burst` requests at once, then one every `every_s` seconds."""

    def __init__(self, burst: int, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.burst, self.every_s, self.clock = burst, every_s, clock
        self._tokens: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend one token of `key`'s bucket, or raise Refused saying when the next one comes."""
        with self._lock:
            now = self.clock()
            tokens, when = self._tokens.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) / self.every_s)
            if tokens < 1.0:
                wait = (1.0 - tokens) * self.every_s
                raise Refused(f"Too many requests of this kind from you; try again in {wait:.0f} s.")
            self._tokens[key] = (tokens - 1.0, now)
            if len(self._tokens) > 10_000:  # forget callers whose bucket has refilled
                full = [k for k, (t, w) in self._tokens.items() if t + (now - w) / self.every_s >= self.burst]
                for k in full:
                    del self._tokens[k]


class Door:
    """Admission bookkeeping: `admit` at the join (counts the job as queued), `running` around the job itself
    (turns it into a running one, and forgets it when it ends). Thread-safe."""

    def __init__(self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic,
                 slow: Callable[[], list[str]] = lambda: []):
        self.limits = limits or Limits()
        self.clock, self.slow = clock, slow  # slow(): the explanation methods that take seconds
        self._rates = {name: CallerRate(rule.burst, rule.every_s, clock) for name, rule in self.limits.rules.items()}
        self._queued: dict[tuple[str, str], list[float]] = defaultdict(list)  # (caller, class) -> join times
        self._running: dict[tuple[str, str], int] = defaultdict(int)
        self._uploads: deque[tuple[float, str, int]] = deque()  # (when, caller, bytes) within the upload window
        self._sessions: OrderedDict[str, None] = OrderedDict()  # session ids seen (the most recent 100,000)
        self._session_rate = CallerRate(self.limits.session_burst, self.limits.session_every_s, clock)
        self._lock = threading.Lock()

    def admit(self, caller: str, event: str | None, data=None) -> None:
        """Let one job of `event` (with arguments `data`) join for `caller`, or raise Refused with the reason."""
        if event not in EVENTS:
            raise Refused("This server has no such event.")
        cls = job_class(event, data, self.slow)
        rule = self.limits.rules[cls]
        with self._lock:
            self._forget_stale()
            if rule.per_caller is None:  # not one of our jobs: nothing to count, only the rate
                self._rates[cls].take(caller)
                return
            mine = len(self._queued.get((caller, cls), ())) + self._running.get((caller, cls), 0)
            if mine >= rule.per_caller:
                raise Refused(_busy(cls, rule.per_caller))
            if self._pending(caller) >= self.limits.caller_share:
                raise Refused("You have too many requests waiting or running; wait for some to finish.")
            waiting = sum(len(v) for k, v in self._queued.items() if k[1] == cls)
            if rule.waiting is not None and waiting >= rule.waiting:
                raise Refused(f"{waiting} requests of this kind are waiting already; try again in a few minutes.")
            self._rates[cls].take(caller)
            self._queued[(caller, cls)].append(self.clock())

    @contextmanager
    def running(self, caller: str, event: str, data=None) -> Iterator[None]:
        """The job of `caller` that joined as `event` (with arguments `data`) runs for the duration of the block."""
        key = (caller, job_class(event, data, self.slow))
        with self._lock:
            # the join's class, when a request named its arguments differently from how they run (Gradio's
            # /call/v2 takes them by name): a slow and a fast explanation share one ticket between them
            joined = key if self._queued.get(key) else next(
                ((caller, c) for c in CLASS_TWINS.get(key[1], ()) if self._queued.get((caller, c))), key)
            if self._queued.get(joined):
                self._queued[joined].pop(0)
                if not self._queued[joined]:
                    del self._queued[joined]
            self._running[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[key] -= 1
                if not self._running[key]:
                    del self._running[key]
                if key in self._queued and not self._queued[key]:
                    del self._queued[key]

    def take_session(self, caller: str, session: str) -> None:
        """A job of page session `session`: a session not seen before spends one of the caller's session tokens."""
        with self._lock:
            if session in self._sessions:
                self._sessions.move_to_end(session)
                return
        try:
            self._session_rate.take(caller)
        except Refused:
            raise Refused("Too many new page sessions from you; reload the page in a minute.") from None
        with self._lock:
            self._sessions[session] = None
            while len(self._sessions) > 100_000:
                self._sessions.popitem(last=False)

    def take_upload(self, caller: str, size: int) -> list:
        """Reserve an upload of `size` declared bytes for `caller`, or raise Refused when it would pass the caller's
        or everyone's budget for the window; `settle_upload` then counts what actually arrived."""
        limits = self.limits
        with self._lock:
            now = self.clock()
            while self._uploads and now - self._uploads[0][0] >= limits.upload_window_s:
                self._uploads.popleft()
            mine = sum(n for _, who, n in self._uploads if who == caller)
            if mine + size > limits.upload_per_caller:
                raise Refused(f"You have uploaded {mine >> 20} MB in the last {limits.upload_window_s / 60:.0f} "
                              f"minutes; at most {limits.upload_per_caller >> 20} MB are taken from one caller.")
            if sum(n for _, _, n in self._uploads) + size > limits.upload_total:
                raise Refused("This server has taken all the uploads it can hold for now; try again in a few "
                              "minutes.")
            entry = [now, caller, size]
            self._uploads.append(entry)
            return entry

    def settle_upload(self, entry: list, received: int) -> None:
        """An upload reserved by `take_upload` ended: it counts the bytes that arrived, not those declared."""
        with self._lock:
            entry[2] = min(entry[2], received)

    def withdraw(self, caller: str, event: str, data=None) -> None:
        """A job the door admitted that Gradio then refused: it no longer counts."""
        key = (caller, job_class(event, data, self.slow))
        with self._lock:
            if self._queued.get(key):
                self._queued[key].pop()
                if not self._queued[key]:
                    del self._queued[key]

    def pending(self, caller: str) -> int:
        """Jobs of `caller` queued or running, all classes."""
        with self._lock:
            return self._pending(caller)

    def _pending(self, caller: str) -> int:
        return sum(len(v) for k, v in self._queued.items() if k[0] == caller) + \
            sum(n for k, n in self._running.items() if k[0] == caller)

    def _forget_stale(self) -> None:
        now = self.clock()
        for key in list(self._queued):
            forget = self.limits.rules[key[1]].forget_s
            self._queued[key] = [t for t in self._queued[key] if now - t < forget]
            if not self._queued[key]:
                del self._queued[key]


def _busy(cls: str, n: int) -> str:
    if cls == "fit":
        return "You already have a fit or training queued or running; wait for it to finish."
    return f"You already have {n} request(s) of this kind queued or running; wait for them to finish."


