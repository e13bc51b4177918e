"""Categories kept in a folder (DEFECT_XAI_CATEGORY_DIR: a self-hosted or private Space) as ordinary bundles: the
on-disk `CategoryStore`. Nothing expires; the cap only bounds how many are loaded at once.

A category asked for again is loaded from its folder, outside the store's lock; ids are listed to everyone only if
the operator says so; past `max_kept` categories or `max_kept_bytes` the least recently used are deleted, with a
warning in the log. Each category's folder also holds its maker (`owner`) and a file whose time is its last use
(`used`), so both survive a restart.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from space.categories import BUNDLE, ID_PATTERN, Category, CategoryGone, CategoryLimits, CategoryStore

LOG = logging.getLogger("defect_xai")

OWNER, USED = "owner", "used"  # a kept category's maker (a caller key) and a file whose time is its last use
USED_EVERY_S = 60.0  # a kept category's last use is written at most this often


class KeptCategories(CategoryStore):
    """Categories kept as bundles under `folder`, loaded again with `load` (bundle folder -> inspector) when asked
    for; the least recently used of whoever holds the most is only unloaded to make room."""

    def __init__(self, limits: CategoryLimits | None, folder: str | Path,
                 load: Callable[[Path], object] | None = None, clock: Callable[[], float] = time.time):
        super().__init__(limits, Path(folder), clock)
        self.load = load
        self._names: dict[str, str] = {}  # ids not loaded now -> name
        self._used: dict[str, float] = {}  # ids -> last use (from their USED file at start)
        self._loading = threading.Lock()  # one kept category loads at a time, outside `_lock`
        for bundle in sorted(self.root.glob(f"*/{BUNDLE}/bundle.json")):
            cid = bundle.parent.parent.name
            if ID_PATTERN.fullmatch(cid):
                self._names[cid] = _name_of(bundle.parent)
                self._used[cid] = _mtime(self.root / cid / USED) or _mtime(bundle)

    def __contains__(self, cid: object) -> bool:
        return super().__contains__(cid) or (isinstance(cid, str) and cid in self._names)

    def kept(self) -> dict[str, str]:
        with self._lock:
            return {**self._names, **{c.id: c.name for c in self._held.values()}}

    # -- the store's policy ----------------------------------------------------------------------
    def _expiry(self, now: float) -> float | None:
        return None

    def _may_push_out(self, category: Category, now: float) -> bool:
        return True  # only unloaded: it loads again when asked for

    def _when_full(self, newcomer: str | None) -> None:
        return None  # a kept one loaded again goes over the cap until some are free

    def _drop(self, cid: str, why: str) -> None:
        category = self._held.pop(cid)
        self._names[cid] = category.name

    def _added(self, category: Category, now: float) -> None:
        with self._lock:
            self._names.pop(category.id, None)
        (category.folder / OWNER).write_text(category.owner)
        self._mark_used(category.id, now, force=True)
        self._trim(spare=category.id)

    def _touched(self, cid: str, now: float) -> None:
        self._mark_used(cid, now)

    def _unloaded(self, cid: str) -> Category | None:
        if cid not in self._names or self.load is None:
            return None
        with self._loading:  # nobody else waits for it: the store's lock is not held while it loads
            return self._lookup(cid) or self._reload(cid)

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

    def _mark_used(self, cid: str, now: float, force: bool = False) -> None:
        """Remember a kept category's last use, on disk at most every USED_EVERY_S (it survives a restart)."""
        if force or now - self._used.get(cid, 0.0) >= USED_EVERY_S:
            try:
                (self.root / cid / USED).touch()
                os.utime(self.root / cid / USED, (now, now))
            except OSError:  # deleted meanwhile
                return
        self._used[cid] = now

    def _trim(self, spare: str) -> None:
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
                self._remember_gone(cid, "the server's folder of kept categories was over its budget and this one "
                                         "was the least recently used")
                total -= sizes.pop(cid)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _name_of(bundle: Path) -> str:
    try:
        return str(json.loads((bundle / "bundle.json").read_text()).get("category", bundle.parent.name))
    except (OSError, ValueError):
        return bundle.parent.name
