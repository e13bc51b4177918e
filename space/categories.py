"""Categories made at run time (/fit): unguessable ids and a cap on how many are held, behind one interface
(`CategoryStore`) with two stores, chosen once: in memory (`MemoryCategories`, the default) or kept in
DEFECT_XAI_CATEGORY_DIR as ordinary bundles (`space.kept_categories.KeptCategories`).

A category is a folder `<root>/<id>/` holding `bundle/` (the bundle, as any training script writes it) and
`pictures/` (the good pictures it was fitted on, for training its classifier later; never part of the bundle).
In memory the root is a scratch folder, a category lives `ttl_s` and its folder goes with it; a caller's new
category pushes out only that caller's own or one nobody has used for `idle_s`, else the fit is refused with the
wait.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import weakref
import zipfile
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from xai.errors import UserError

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16): 128 random bits
BUNDLE, PICTURES = "bundle", "pictures"
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
    # model pixels of one fit, at the detector's view (what its time and memory follow): room for 300 pictures of
    # 4:3, not for hundreds of slivers each seen at the view's longest side
    max_fit_megapixels: float = 48.0
    max_fit_s: float = 300.0  # a fit still running after this long is stopped (one at the pixel cap ends well before)
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


class CategoryStore(ABC):
    """The categories made at run time, by id: what every caller uses (making, looking up, pinning, listing,
    zipping), and the bookkeeping both stores share (the held ones, least recently used first, under the caps).
    Thread-safe; expired ones are dropped whenever the store is used. A store's own policy is in its hooks."""

    def __init__(self, limits: CategoryLimits | None, root: Path, clock: Callable[[], float]):
        self.limits = limits or CategoryLimits()
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._held: OrderedDict[str, Category] = OrderedDict()  # least recently used first
        self._gone: OrderedDict[str, str] = OrderedDict()  # id -> why it went
        self._lock = threading.RLock()

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
        category = Category(cid, name, owner, self.root / cid, inspector, now, self._expiry(now), now)
        with self._lock:
            self._sweep(now)
            mine = [c for c in self._held.values() if c.owner == owner and not c.pins]
            for old in mine[:max(0, len(mine) - self.limits.per_caller + 1)]:
                self._drop(old.id, f"it was replaced: one caller may hold {self.limits.per_caller} categories "
                                   "at a time, and this was the least recently used of them")
            self._make_room(owner, now)
            self._held[cid] = category
        self._added(category, now)
        return category

    # -- using -----------------------------------------------------------------------------------
    def get(self, cid: str) -> Category:
        """The category (now its most recently used), or CategoryGone saying why it is not here."""
        category = self._lookup(cid)
        if category is None and isinstance(cid, str):
            category = self._unloaded(cid)
        if category is None:
            why = self._gone.get(cid) if isinstance(cid, str) else None
            if why is not None:
                raise CategoryGone(f"Category {cid} is gone: {why}. Fit it again with /fit.")
            raise CategoryGone(f"Unknown category {cid!r}.")
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
        return isinstance(cid, str) and (cid in self._held or cid in self._gone)

    def held(self) -> list[Category]:
        """The categories loaded now (after dropping the expired ones)."""
        with self._lock:
            self._sweep(self.clock())
            return list(self._held.values())

    def kept(self) -> dict[str, str]:
        """The categories kept on disk, loaded or not, as id -> name (none unless the store keeps them)."""
        return {}

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

    # -- each store's policy ---------------------------------------------------------------------
    @abstractmethod
    def _expiry(self, now: float) -> float | None:
        """When a category made now expires (None: never)."""

    @abstractmethod
    def _may_push_out(self, category: Category, now: float) -> bool:
        """Whether another caller's `category`, not in use by a training, may make room for a new one."""

    @abstractmethod
    def _when_full(self, newcomer: str | None) -> None:
        """Nobody's category may go to make room: raise ServerFull, or return to go over the cap."""

    @abstractmethod
    def _drop(self, cid: str, why: str) -> None:
        """Stop holding `cid` (under the lock), for the reason `why`."""

    def _added(self, category: Category, now: float) -> None:
        """After `category` was made and held."""
        return None

    def _touched(self, cid: str, now: float) -> None:
        """After held category `cid` was looked up."""
        return None

    def _unloaded(self, cid: str) -> Category | None:
        """A category not held now, held again if the store has it; None when it has not."""
        return None

    # -- internals -------------------------------------------------------------------------------
    def _lookup(self, cid) -> Category | None:
        """The held category `cid`, marked used now; None when it is not loaded."""
        with self._lock:
            now = self.clock()
            self._sweep(now)
            category = self._held.get(cid) if isinstance(cid, str) else None
            if category is not None:
                category.last_used = now
                self._held.move_to_end(cid)
        if category is not None:
            self._touched(cid, now)
        return category

    def _victim(self, newcomer: str | None, now: float) -> Category | None:
        """Whose category makes room for one more (of `newcomer`), or None if nobody's may. The newcomer's own least
        recently used first, else, of those the store lets go (`_may_push_out`), the least recently used of
        whoever holds the most, so that a few callers cannot flush every other visitor's."""
        free = [c for c in self._held.values() if not c.pins]  # least recently used first
        own = [c for c in free if newcomer is not None and c.owner == newcomer]
        if own:
            return own[0]
        free = [c for c in free if self._may_push_out(c, now)]
        if not free:
            return None
        counts = Counter(c.owner for c in free)
        most = max(counts.values())
        return next(c for c in free if counts[c.owner] == most)

    def _make_room(self, newcomer: str | None, now: float) -> None:
        """Drop categories until one more fits under the cap (see _victim); when nobody's may go, `_when_full`."""
        while len(self._held) >= self.limits.capacity:
            victim = self._victim(newcomer, now)
            if victim is None:
                self._when_full(newcomer)
                return
            why = ("it was replaced by its maker's newer one (the server holds "
                   f"{self.limits.capacity} categories at a time)" if victim.owner == newcomer else
                   f"the server holds {self.limits.capacity} categories at a time and this one had not been used "
                   f"for {(now - victim.last_used) / 60:.0f} minutes")
            self._drop(victim.id, why)

    def _sweep(self, now: float) -> None:
        for cid in [c.id for c in self._held.values()
                    if c.expires_at is not None and c.expires_at <= now and not c.pins]:
            self._drop(cid, f"it expired ({self.limits.ttl_s / 60:.0f} minutes after it was made)")

    def _remember_gone(self, cid: str, why: str) -> None:
        self._gone[cid] = why
        while len(self._gone) > GONE_REMEMBERED:
            self._gone.popitem(last=False)


class MemoryCategories(CategoryStore):
    """Categories held in memory only, in a scratch folder that goes with the store: each lives `ttl_s`, and
    another caller's makes room for a new one only once nobody has used it for `idle_s`."""

    def __init__(self, limits: CategoryLimits | None = None, clock: Callable[[], float] = time.time):
        super().__init__(limits, Path(tempfile.mkdtemp(prefix="defect-xai-categories-")), clock)
        weakref.finalize(self, shutil.rmtree, str(self.root), True)  # not left for the next process

    def _expiry(self, now: float) -> float | None:
        return now + self.limits.ttl_s

    def _may_push_out(self, category: Category, now: float) -> bool:
        return now - category.last_used >= self.limits.idle_s

    def _when_full(self, newcomer: str | None) -> None:
        if newcomer is not None:
            self.check_room(newcomer)  # raises ServerFull with the wait

    def _drop(self, cid: str, why: str) -> None:
        category = self._held.pop(cid)
        shutil.rmtree(category.folder, ignore_errors=True)
        (_downloads() / f"{cid}.zip").unlink(missing_ok=True)
        self._remember_gone(cid, why)


def _downloads() -> Path:
    return Path(tempfile.gettempdir()) / "defect-xai-downloads"
