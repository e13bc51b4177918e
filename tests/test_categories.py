"""Categories made at run time (space.categories) and the files of one fit (space.uploads), without any model: a fake
clock drives the time to live, and every refusal is checked for the message its sender gets."""

from __future__ import annotations

import json
import zipfile

import pytest

from space.categories import CategoryGone, CategoryLimits, CategoryStore, MemoryCategories, ServerFull
from space.kept_categories import KeptCategories
from space.uploads import UploadError, gather


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fitted(store: CategoryStore, owner: str = "a", name: str = "part") -> str:
    cid, folder = store.new_folder()
    (folder / "bundle").mkdir()
    (folder / "bundle" / "bundle.json").write_text(json.dumps({"category": name}))
    store.add(cid, name, owner, inspector=f"inspector of {name}")
    return cid


def test_ids_are_unguessable_and_a_category_expires_with_its_files(tmp_path):
    clock = Clock()
    store = MemoryCategories(CategoryLimits(ttl_s=60), clock=clock)
    ids = {_fitted(store, owner=str(i)) for i in range(3)}
    assert len(ids) == 3 and all(len(cid) == 22 for cid in ids)
    cid = next(iter(ids))
    folder = store.get(cid).folder
    assert store.get(cid).inspector == "inspector of part" and folder.is_dir()
    clock.now += 61
    with pytest.raises(CategoryGone, match="expired"):
        store.get(cid)
    assert not folder.exists() and store.held() == []
    with pytest.raises(CategoryGone, match="Unknown category"):
        store.get("A" * 22)


def test_a_full_server_refuses_a_new_category_until_one_is_idle_and_says_so():
    """Two visitors' categories in use fill the server: a third visitor's fit is refused up front with the wait,
    never taking theirs; once nobody has used one for idle_s, the least recently used of those makes room."""
    clock = Clock()
    store = MemoryCategories(CategoryLimits(capacity=2, per_caller=5, idle_s=600), clock=clock)
    first, second = _fitted(store, "a"), _fitted(store, "b")
    clock.now += 300
    store.get(first)  # now the second is the least recently used
    with pytest.raises(ServerFull, match=r"holds 2 categories.*one frees in about 5 minutes"):
        store.new_folder("c")
    cid, folder = store.new_folder()  # a fit that started before the server filled up is refused when done
    with pytest.raises(ServerFull):
        store.add(cid, "late", "c", "inspector")
    store.discard(folder)  # (as Parts.fit does with a failed fit's folder)
    assert {c.id for c in store.held()} == {first, second} and len(list(store.root.iterdir())) == 2
    clock.now += 301
    third = _fitted(store, "c")
    assert {c.id for c in store.held()} == {first, third}
    with pytest.raises(CategoryGone, match="had not been used for 10 minutes"):
        store.get(second)
    assert len(list(store.root.iterdir())) == 2  # memory and disk bounded alike
    fourth = _fitted(store, "c")  # a caller at the cap pushes out their own
    assert {c.id for c in store.held()} == {first, fourth}


def test_one_caller_cannot_flush_everyone_elses_categories():
    store = MemoryCategories(CategoryLimits(capacity=5, per_caller=2), clock=Clock())
    other = _fitted(store, "victim")
    mine = [_fitted(store, "flooder") for _ in range(6)]
    held = {c.id for c in store.held()}
    assert other in held and held - {other} == set(mine[-2:])
    with pytest.raises(CategoryGone, match="one caller may hold 2"):
        store.get(mine[0])


def test_three_busy_callers_cannot_flush_the_other_visitors_categories():
    """Four visitors hold one category each; three callers then make three each (8 held at most): the visitors'
    categories stay, the busy callers make room among themselves."""
    clock = Clock()
    store = MemoryCategories(CategoryLimits(capacity=8, per_caller=3), clock=clock)
    visitors = [_fitted(store, f"visitor{i}") for i in range(4)]
    for round_ in range(3):
        for caller in ("x", "y", "z"):
            clock.now += 1
            _fitted(store, caller, f"{caller}{round_}")
    held = store.held()
    assert {c.id for c in held} >= set(visitors) and len(held) == 8
    with pytest.raises(ServerFull):  # a fourth busy address finds no room: it takes nobody's
        _fitted(store, "w")


def test_a_category_folder_persists_and_loads_again_with_its_maker(tmp_path):
    loads = []
    store = KeptCategories(CategoryLimits(capacity=1), folder=tmp_path, load=lambda b: loads.append(b) or "reloaded")
    first = _fitted(store, "a", "bolt")
    second = _fitted(store, "b", "nut")  # over the cap: the first is unloaded, not deleted
    assert store.get(second).expires_at is None and (tmp_path / first / "bundle" / "bundle.json").is_file()
    assert store.kept() == {first: "bolt", second: "nut"}
    assert store.shared() == {}  # ids are not listed to strangers unless the operator says so
    again = store.get(first)
    assert again.inspector == "reloaded" and again.owner == "a" and loads == [tmp_path / first / "bundle"]
    restarted = KeptCategories(CategoryLimits(list_kept=True), folder=tmp_path, load=lambda b: "from disk")
    assert restarted.shared() == {first: "bolt", second: "nut"}
    assert restarted.get(second).inspector == "from disk" and restarted.get(second).owner == "b"


def test_loading_a_kept_category_holds_up_nobody_else(tmp_path):
    """A kept category loads outside the store's lock: while one takes seconds to load, a held one answers."""
    import threading
    import time

    gate = threading.Event()
    store = KeptCategories(CategoryLimits(capacity=2), folder=tmp_path, load=lambda b: gate.wait(30) and "slow")
    slow, busy = _fitted(store, "a", "slow"), _fitted(store, "b", "busy")
    store._drop(slow, "test")  # unloaded, still kept
    loading = threading.Thread(target=store.get, args=(slow,))
    loading.start()
    time.sleep(0.2)
    start = time.perf_counter()
    assert store.get(busy).name == "busy" and time.perf_counter() - start < 0.1 and loading.is_alive()
    gate.set()
    loading.join(10)
    assert store.get(slow).inspector == "slow"


def test_kept_categories_over_budget_lose_the_least_recently_used_with_a_warning(tmp_path, caplog):
    clock = Clock()
    store = KeptCategories(CategoryLimits(capacity=8, max_kept=3), folder=tmp_path, clock=clock)
    made = []
    for i in range(3):
        clock.now += 100
        made.append(_fitted(store, "a", f"p{i}"))
    clock.now += 100
    store.get(made[0])  # the second is now the least recently used
    clock.now += 100
    with caplog.at_level("WARNING", logger="defect_xai"):
        newest = _fitted(store, "b", "p3")
    assert set(store.kept()) == {made[0], made[2], newest} and not (tmp_path / made[1]).exists()
    assert "over its budget" in caplog.text and made[1] in caplog.text
    with pytest.raises(CategoryGone, match="least recently used"):
        store.get(made[1])
    big = KeptCategories(CategoryLimits(max_kept_bytes=1), folder=tmp_path, clock=clock)  # a byte budget
    clock.now += 100
    only = _fitted(big, "c", "p4")
    assert set(big.kept()) == {only}  # every older one went; the one just made stays


def test_download_is_the_bundle_at_the_zip_root():
    store = MemoryCategories(clock=Clock())
    cid = _fitted(store)
    (store.get(cid).pictures / "000_a.png").write_bytes(b"not part of the bundle")
    with zipfile.ZipFile(store.archive(cid)) as archive:
        assert archive.namelist() == ["bundle.json"]


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_zip_member_names_never_leave_the_folder(tmp_path):
    archive = _zip(tmp_path / "pics.zip", {"../../evil.png": b"a", "/etc/abs.png": b"b", "ok/x.JPG": b"c",
                                           "__MACOSX/._x.png": b"d", "notes.txt": b"e", ".hidden.png": b"f"})
    plain = tmp_path / "plain.png"
    plain.write_bytes(b"g")
    dest = tmp_path / "dest"
    copies = gather([str(archive), str(plain)], dest, max_pictures=10, max_bytes=1000)
    assert [c.name for c in copies] == ["000_evil.png", "001_abs.png", "002_x.JPG", "003_plain.png"]
    assert all(c.parent == dest for c in copies) and not (tmp_path / "evil.png").exists()
    assert [c.read_bytes() for c in copies] == [b"a", b"b", b"c", b"g"]


def test_caps_on_count_and_bytes_are_checked_before_unpacking(tmp_path):
    many = _zip(tmp_path / "many.zip", {f"{i}.png": b"x" for i in range(5)})
    with pytest.raises(UploadError, match="at most 4"):
        gather([str(many)], tmp_path / "d1", max_pictures=4, max_bytes=10**6)
    # a zip bomb: tiny compressed, large declared size; refused on the declared size, nothing written
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.png", b"\0" * 3_000_000)
    assert bomb.stat().st_size < 10_000
    with pytest.raises(UploadError, match="more than"):
        gather([str(bomb)], tmp_path / "d2", max_pictures=4, max_bytes=2_000_000)
    assert not (tmp_path / "d2").exists()
    with pytest.raises(UploadError, match="No good pictures"):
        gather([str(_zip(tmp_path / "empty.zip", {"readme.txt": b"x"}))], tmp_path / "d4", 4, 10**6)
    with pytest.raises(UploadError, match="list of files"):
        gather([{"path": "/etc/passwd"}], tmp_path / "d5", 4, 10**6)
