"""Categories made at run time (/fit): unguessable ids, a time to live and a cap on how many are held, or, with
DEFECT_XAI_CATEGORY_DIR, a folder where they are kept as ordinary bundles.

A category is a folder `<root>/<id>/` holding `bundle/` (the bundle, as any training script writes it) and
`pictures/` (the good pictures it was fitted on, for training its classifier later; never part of the bundle).
In memory (the default) the root is a scratch folder and a category's folder goes with it; a caller's new category
pushes out only that caller's own or one nobody has used for `idle_s`, else the fit is refused with the wait. In a
folder (self-hosted or private Space) nothing expires, the cap only bounds how many are loaded at once (one asked for
again is loaded from its folder, outside the store's lock), ids are listed to everyone only if the operator says so,
and past `max_kept` categories or `max_kept_bytes` the least recently used are deleted, with a warning in the log.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import weakref
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from xai.errors import UserError

LOG = logging.getLogger("defect_xai")

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16): 128 random bits
BUNDLE, PICTURES = "bundle", "pictures"
OWNER, USED = "owner", "used"  # a kept category's maker (a caller key) and a file whose time is its last use
USED_EVERY_S = 60.0  # a kept category's last use is written at most this often
GONE_REMEMBERED = 10_000  # ids whose category went, kept to say why (a bounded record)


class CategoryGone(UserError, ValueError):
    """A category id that is not (or no longer) held; the message says which and what to do."""


class ServerFull(UserError, ValueError):
    """No room for a new category without taking a category another visitor is using; the message says the wait."""


@dataclass(frozen=True)
class CategoryLimits:
    """What categories made at run time may cost (configs as data)."""

    ttl_s: float = 3600.0  # a category lives this long after it was made (in memory only)
    capacity: int = 8  # categories held in memory at once, in all; the least recently used goes first
    per_caller: int = 3  # categories one caller may hold; their own least recently used goes first
    max_pictures: int = 300  # good pictures in one fit
    max_defects: int = 30  # optional defective pictures in one fit
    max_fit_bytes: int = 200 * 1024 * 1024  # all files of one fit together (zip members counted uncompressed)
    # model pixels of one fit, at the detector's view (what its time and memory follow): 300 pictures of 4:3 are
    # 41 million, bottle's 209 squares 21 million; 300 slivers of 8 x 30 px, each seen at 288 x 1,024, were 88
    # million (214 s and 8 GB before this cap)
    max_fit_megapixels: float = 48.0
    max_fit_s: float = 300.0  # a fit still running after this long is stopped (48 million pixels take about 110 s)
    # in memory: another caller's category may make room for a new one once nobody has used it for this long;
    # until then a fit that finds the server full is refused with the wait (a caller only ever pushes out their own)
    idle_s: float = 900.0
    # kept in DEFECT_XAI_CATEGORY_DIR: past either budget the least recently used go (deleted, logged)
    max_kept: int = 500
    max_kept_bytes: int = 20 * 1024**3
    list_kept: bool = False  # DEFECT_XAI_LIST_KEPT: list kept categories' ids in /info and on every page


@dataclass
class Category:
    """One category made at run time."""

    id: str
    name: str
    owner: str  # who made it (a caller key), for the per-caller cap
    folder: Path
    inspector: object  # xai.inspector.Inspector
    created: float
    expires_at: float | None
    last_used: float = field(default=0.0)
    pins: int = 0  # work in progress on it (training): it neither expires nor is evicted until that ends

    @property
    def bundle(self) -> Path:
        return self.folder / BUNDLE

    @property
    def pictures(self) -> Path:
        return self.folder / PICTURES


class CategoryStore:
    """The categories made at run time, by id. Thread-safe; expired ones are dropped whenever the store is used."""

    def __init__(self, limits: CategoryLimits | None = None, folder: str | Path | None = None,
                 load: Callable[[Path], object] | None = None, clock: Callable[[], float] = time.time):
        self.limits = limits or CategoryLimits()
        self.persistent = folder is not None
        self.root = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="defect-xai-categories-"))
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.persistent:  # the scratch folder goes with the store (and the process), not left for the next
            weakref.finalize(self, shutil.rmtree, str(self.root), True)
        self.load = load  # bundle folder -> inspector, to load a kept category again
        self.clock = clock
        self._held: OrderedDict[str, Category] = OrderedDict()  # least recently used first
        self._gone: OrderedDict[str, str] = OrderedDict()  # id -> why it went
        self._names: dict[str, str] = {}  # persistent ids not loaded now -> name
        self._used: dict[str, float] = {}  # persistent ids -> last use (from their USED file at start)
        self._lock = threading.RLock()
        self._loading = threading.Lock()  # one kept category loads at a time, outside `_lock`
        if self.persistent:
            for bundle in sorted(self.root.glob(f"*/{BUNDLE}/bundle.json")):
                cid = bundle.parent.parent.name
                if ID_PATTERN.fullmatch(cid):
                    self._names[cid] = _name_of(bundle.parent)
                    self._used[cid] = _mtime(self.root / cid / USED) or _mtime(bundle)

    # -- making ----------------------------------------------------------------------------------
    def new_folder(self, owner: str | None = None) -> tuple[str, Path]:
        """A fresh unguessable id and its (empty) folder, with pictures/ made; with `owner`, refused up front
        (ServerFull) when the category could not be held once fitted."""
        if owner is not None:
            self.check_room(owner)
        cid = secrets.token_urlsafe(16)
        folder = self.root / cid
        (folder / PICTURES).mkdir(parents=True)
        return cid, folder

    def check_room(self, owner: str) -> None:
        """ServerFull, with the wait, if a new category of `owner` would have to push out another's in use."""
        with self._lock:
            now = self.clock()
            self._sweep(now)
            if len(self._held) < self.limits.capacity or self._victim(owner, now) is not None:
                return
            free = [c for c in self._held.values() if not c.pins]
            waits = [min(c.last_used + self.limits.idle_s, c.expires_at or float("inf")) - now for c in free]
            wait = max(1.0, min(waits)) if waits else self.limits.idle_s
            raise ServerFull(f"This server holds {self.limits.capacity} categories, all used by their makers in the "
                             f"last {self.limits.idle_s / 60:.0f} minutes; one frees in about "
                             f"{wait / 60:.0f} minutes. Try again then, or run defect-xai yourself.")

    def discard(self, folder: Path) -> None:
        """Remove the folder of a category that was never added (a failed or cancelled fit)."""
        if folder.parent == self.root:
            shutil.rmtree(folder, ignore_errors=True)

    def add(self, cid: str, name: str, owner: str, inspector) -> Category:
        """Hold a fitted category: the caller's own least recently used go when over the per-caller cap, and when
        the server is full, the caller's own or one idle for `idle_s` (else ServerFull: nobody's in use is taken)."""
        now = self.clock()
        category = Category(cid, name, owner, self.root / cid, inspector, now,
                            None if self.persistent else now + self.limits.ttl_s, now)
        with self._lock:
            self._sweep(now)
            mine = [c for c in self._held.values() if c.owner == owner and not c.pins]
            for old in mine[:max(0, len(mine) - self.limits.per_caller + 1)]:
                self._drop(old.id, f"it was replaced: one caller may hold {self.limits.per_caller} categories "
                                   "at a time, and this was the least recently used of them")
            self._make_room(owner, now)
            self._held[cid] = category
            self._names.pop(cid, None)
        if self.persistent:
            (category.folder / OWNER).write_text(owner)
            self._mark_used(cid, now, force=True)
            self._trim_kept(spare=cid)
        return category

    # -- using -----------------------------------------------------------------------------------
    def get(self, cid: str) -> Category:
        """The category (now its most recently used), or CategoryGone saying why it is not here. A kept category
        not loaded now is loaded outside the store's lock: nobody else waits for it."""
        category = self._lookup(cid)
        if category is None and isinstance(cid, str) and cid in self._names and self.load is not None:
            with self._loading:
                category = self._lookup(cid) or self._reload(cid)
        if category is None:
            why = self._gone.get(cid) if isinstance(cid, str) else None
            if why is not None:
                raise CategoryGone(f"Category {cid} is gone: {why}. Fit it again with /fit.")
            raise CategoryGone(f"Unknown category {cid!r}.")
        return category

    def _lookup(self, cid) -> Category | None:
        """The held category `cid`, marked used now; None when it is not loaded."""
        with self._lock:
            now = self.clock()
            self._sweep(now)
            category = self._held.get(cid) if isinstance(cid, str) else None
            if category is not None:
                category.last_used = now
                self._held.move_to_end(cid)
        if category is not None and self.persistent:
            self._mark_used(cid, now)
        return category

    @contextmanager
    def pinned(self, cid: str) -> Iterator[Category]:
        """The category, kept (no expiry, no eviction) for the duration of the block."""
        category = self.get(cid)
        with self._lock:
            if self._held.get(cid) is not category:  # dropped between the lookup and now
                raise CategoryGone(f"Category {cid} is gone. Fit it again with /fit.")
            category.pins += 1
        try:
            yield category
        finally:
            with self._lock:
                category.pins -= 1
                self._sweep(self.clock())

    @contextmanager
    def locked(self) -> Iterator[None]:
        """No lookup sees the store while the block runs (a category's files being swapped)."""
        with self._lock:
            yield

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, str) and (cid in self._held or cid in self._names or cid in self._gone)

    def held(self) -> list[Category]:
        """The categories loaded now (after dropping the expired ones)."""
        with self._lock:
            self._sweep(self.clock())
            return list(self._held.values())

    def kept(self) -> dict[str, str]:
        """Persistent categories, loaded or not, as id -> name; empty in memory."""
        if not self.persistent:
            return {}
        with self._lock:
            return {**self._names, **{c.id: c.name for c in self._held.values()}}

    def shared(self) -> dict[str, str]:
        """The kept categories everyone may list (id -> name): all of them if the operator says so, else none."""
        return self.kept() if self.limits.list_kept else {}

    def archive(self, cid: str) -> str:
        """The category's bundle as a zip (the bundle layout at its root), written under the system's temporary
        folder, where Gradio may serve it from; one per category, replaced on every call."""
        category = self.get(cid)
        target = _downloads() / f"{cid}.zip"
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".part")  # concurrent calls never share it
        os.close(handle)
        with self._lock:  # not while a training swaps the bundle's files
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(category.bundle.rglob("*")):
                    if path.is_file():  # weights and index barely compress: stored, which is 10x faster
                        stored = path.suffix in (".safetensors", ".faiss", ".jpg")
                        archive.write(path, path.relative_to(category.bundle).as_posix(),
                                      zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
        os.replace(partial, target)
        return str(target)

    # -- internals -------------------------------------------------------------------------------
    def _reload(self, cid: str) -> Category:
        folder = self.root / cid
        try:
            inspector = self.load(folder / BUNDLE)
        except Exception as exc:  # a damaged folder: say so, for this id alone
            raise CategoryGone(f"Category {cid} is kept here but could not be loaded ({type(exc).__name__}).") from None
        owner = (folder / OWNER).read_text().strip() if (folder / OWNER).is_file() else ""
        with self._lock:
            if cid not in self._names:  # deleted over the budget while it loaded
                raise CategoryGone(f"Unknown category {cid!r}.")
            now = self.clock()
            category = Category(cid, self._names[cid], owner, folder, inspector, now, None, now)
            self._make_room(None, now)
            self._held[cid] = category
            del self._names[cid]
        self._mark_used(cid, now)
        return category

    def _victim(self, newcomer: str | None, now: float) -> Category | None:
        """Whose category makes room for one more (of `newcomer`), or None if nobody's may. The newcomer's own least
        recently used first. Kept categories are only unloaded: the least recently used of whoever holds the most.
        In memory, another's goes only once nobody has used it for idle_s: the least recently used of whoever
        holds the most of those (three addresses of three categories each once flushed every other visitor's)."""
        free = [c for c in self._held.values() if not c.pins]  # least recently used first
        own = [c for c in free if newcomer is not None and c.owner == newcomer]
        if own:
            return own[0]
        if not self.persistent:
            free = [c for c in free if now - c.last_used >= self.limits.idle_s]
        if not free:
            return None
        counts = Counter(c.owner for c in free)
        most = max(counts.values())
        return next(c for c in free if counts[c.owner] == most)

    def _make_room(self, newcomer: str | None, now: float) -> None:
        """Drop categories until one more fits under the cap (see _victim); ServerFull when only categories in use
        are left (in memory, for a newcomer); a kept one loaded again goes over the cap until some are free."""
        while len(self._held) >= self.limits.capacity:
            victim = self._victim(newcomer, now)
            if victim is None:
                if self.persistent or newcomer is None:
                    return
                self.check_room(newcomer)  # raises ServerFull with the wait
            why = ("it was replaced by its maker's newer one (the server holds "
                   f"{self.limits.capacity} categories at a time)" if victim.owner == newcomer else
                   f"the server holds {self.limits.capacity} categories at a time and this one had not been used "
                   f"for {(now - victim.last_used) / 60:.0f} minutes")
            self._drop(victim.id, why)

    def _sweep(self, now: float) -> None:
        for cid in [c.id for c in self._held.values()
                    if c.expires_at is not None and c.expires_at <= now and not c.pins]:
            self._drop(cid, f"it expired ({self.limits.ttl_s / 60:.0f} minutes after it was made)")

    def _drop(self, cid: str, why: str) -> None:
        category = self._held.pop(cid)
        if self.persistent:  # unloaded only: it stays in its folder and loads again when asked for
            self._names[cid] = category.name
            return
        shutil.rmtree(category.folder, ignore_errors=True)
        (_downloads() / f"{cid}.zip").unlink(missing_ok=True)
        self._gone[cid] = why
        while len(self._gone) > GONE_REMEMBERED:
            self._gone.popitem(last=False)

    def _mark_used(self, cid: str, now: float, force: bool = False) -> None:
        """Remember a kept category's last use, on disk at most every USED_EVERY_S (it survives a restart)."""
        if force or now - self._used.get(cid, 0.0) >= USED_EVERY_S:
            try:
                (self.root / cid / USED).touch()
                os.utime(self.root / cid / USED, (now, now))
            except OSError:  # deleted meanwhile
                return
        self._used[cid] = now

    def _trim_kept(self, spare: str) -> None:
        """Past max_kept categories or max_kept_bytes on disk, delete the least recently used kept ones that are
        not in use (never `spare`, the one just made), and warn the operator in the log."""
        with self._lock:
            sizes = {cid: _bytes(self.root / cid) for cid in self.kept()}
            order = sorted(sizes, key=lambda cid: self._used.get(cid, 0.0))
            total = sum(sizes.values())
            busy = {c.id for c in self._held.values() if c.pins} | {spare}
            for cid in order:
                if len(sizes) <= self.limits.max_kept and total <= self.limits.max_kept_bytes:
                    break
                if cid in busy:
                    continue
                LOG.warning("DEFECT_XAI_CATEGORY_DIR over its budget (%d categories, %d MB; at most %d, %d MB): "
                            "deleting %s (%s), unused since %s", len(sizes), total >> 20, self.limits.max_kept,
                            self.limits.max_kept_bytes >> 20, cid, self.kept().get(cid),
                            time.strftime("%Y-%m-%d %H:%M", time.gmtime(self._used.get(cid, 0.0))))
                self._held.pop(cid, None)
                self._names.pop(cid, None)
                self._used.pop(cid, None)
                shutil.rmtree(self.root / cid, ignore_errors=True)
                self._gone[cid] = "the server's folder of kept categories was over its budget and this one was " \
                                  "the least recently used"
                total -= sizes.pop(cid)


def _downloads() -> Path:
    return Path(tempfile.gettempdir()) / "defect-xai-downloads"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _name_of(bundle: Path) -> str:
    import json

    try:
        return str(json.loads((bundle / "bundle.json").read_text()).get("category", bundle.parent.name))
    except (OSError, ValueError):
        return bundle.parent.name
