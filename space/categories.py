"""Categories made at run time (/fit): unguessable ids, a time to live and a cap on how many are held (least
recently used go first), or, with DEFECT_XAI_CATEGORY_DIR, a folder where they are kept as ordinary bundles.

A category is a folder `<root>/<id>/` holding `bundle/` (the bundle, as any training script writes it) and
`pictures/` (the good pictures it was fitted on, for training its classifier later; never part of the bundle).
In memory (the default) the root is a scratch folder and a category's folder goes with it; in a folder
(self-hosted or private Space) nothing expires, every category is shared by everyone, and the cap only bounds
how many are loaded at once: one asked for again is loaded from its folder.
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
    max_kept: int = 500  # categories kept in DEFECT_XAI_CATEGORY_DIR; further fits are refused until some are removed


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
        self._lock = threading.RLock()
        if self.persistent:
            for bundle in sorted(self.root.glob(f"*/{BUNDLE}/bundle.json")):
                cid = bundle.parent.parent.name
                if ID_PATTERN.fullmatch(cid):
                    self._names[cid] = _name_of(bundle.parent)

    # -- making ----------------------------------------------------------------------------------
    def new_folder(self) -> tuple[str, Path]:
        """A fresh unguessable id and its (empty) folder, with pictures/ made."""
        if self.persistent and len(self.shared()) >= self.limits.max_kept:
            raise CategoryGone(f"This server keeps at most {self.limits.max_kept} categories and has that many; "
                               "ask its owner to remove some from DEFECT_XAI_CATEGORY_DIR.")
        cid = secrets.token_urlsafe(16)
        folder = self.root / cid
        (folder / PICTURES).mkdir(parents=True)
        return cid, folder

    def discard(self, folder: Path) -> None:
        """Remove the folder of a category that was never added (a failed or cancelled fit)."""
        if folder.parent == self.root:
            shutil.rmtree(folder, ignore_errors=True)

    def add(self, cid: str, name: str, owner: str, inspector) -> Category:
        """Hold a fitted category; the caller's and then everyone's least recently used go when over the caps."""
        now = self.clock()
        category = Category(cid, name, owner, self.root / cid, inspector, now,
                            None if self.persistent else now + self.limits.ttl_s, now)
        with self._lock:
            self._sweep(now)
            mine = [c for c in self._held.values() if c.owner == owner and not c.pins]
            for old in mine[:max(0, len(mine) - self.limits.per_caller + 1)]:
                self._drop(old.id, f"it was replaced: one caller may hold {self.limits.per_caller} categories "
                                   "at a time, and this was the least recently used of them")
            self._make_room(owner)
            self._held[cid] = category
            self._names.pop(cid, None)
        return category

    # -- using -----------------------------------------------------------------------------------
    def get(self, cid: str) -> Category:
        """The category (now its most recently used), or CategoryGone saying why it is not here."""
        with self._lock:
            now = self.clock()
            self._sweep(now)
            category = self._held.get(cid)
            if category is None and cid in self._names and self.load is not None:
                category = self._reload(cid, now)
            if category is None:
                why = self._gone.get(cid)
                if why is not None:
                    raise CategoryGone(f"Category {cid} is gone: {why}. Fit it again with /fit.")
                raise CategoryGone(f"Unknown category {cid!r}.")
            category.last_used = now
            self._held.move_to_end(cid)
            return category

    @contextmanager
    def pinned(self, cid: str) -> Iterator[Category]:
        """The category, kept (no expiry, no eviction) for the duration of the block."""
        with self._lock:
            category = self.get(cid)
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

    def shared(self) -> dict[str, str]:
        """Persistent categories, loaded or not, as id -> name (everyone may list them); empty in memory."""
        if not self.persistent:
            return {}
        with self._lock:
            return {**self._names, **{c.id: c.name for c in self._held.values()}}

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
    def _reload(self, cid: str, now: float) -> Category:
        try:
            inspector = self.load(self.root / cid / BUNDLE)
        except Exception as exc:  # a damaged folder: say so, for this id alone
            raise CategoryGone(f"Category {cid} is kept here but could not be loaded ({type(exc).__name__}).") from None
        category = Category(cid, self._names[cid], "", self.root / cid, inspector, now, None, now)
        self._make_room()
        self._held[cid] = category
        del self._names[cid]
        return category

    def _make_room(self, newcomer: str | None = None) -> None:
        """Drop unpinned categories until one more (of `newcomer`) fits under the cap: the least recently used of
        whoever holds the most (the newcomer's new one counted), so callers with many categories make room before
        anyone with few loses theirs (three addresses of three categories each once flushed every other visitor's).
        With everyone holding as many, that is the least recently used of all."""
        while len(self._held) >= self.limits.capacity:
            free = [c for c in self._held.values() if not c.pins]  # least recently used first
            if not free:
                return  # every one is busy: over the cap until they finish
            counts = Counter(c.owner for c in free)
            if newcomer is not None:
                counts[newcomer] += 1
            most = max(counts.values())
            victim = next((c for c in free if counts[c.owner] == most), free[0])
            self._drop(victim.id, f"the server holds {self.limits.capacity} categories at a time and this was the "
                                  "least recently used of its maker's, who held the most")

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


def _downloads() -> Path:
    return Path(tempfile.gettempdir()) / "defect-xai-downloads"


def _name_of(bundle: Path) -> str:
    import json

    try:
        return str(json.loads((bundle / "bundle.json").read_text()).get("category", bundle.parent.name))
    except (OSError, ValueError):
        return bundle.parent.name
