"""The public Space played by an attacker: the app launched on a free port, called through gradio_client and raw
HTTP. Each hole is refused with its message (or handled), and a normal /detect still answers right after."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from space.admission import ONLY_UPLOADS, Limits
from space.catalogue import Catalogue
from synthetic import add_defect, texture


@pytest.fixture(scope="module")
def catalogue(classifier_bundle):
    return Catalogue.from_sources(str(classifier_bundle))


@pytest.fixture(scope="module")
def server(catalogue, serve):
    with serve(catalogue, limits=Limits().relaxed(explain={"burst": 4, "every_s": 60.0})) as (url, _):
        yield url


def call(url: str, api_name: str, data: list, timeout: float = 60.0, headers: dict | None = None
         ) -> tuple[str, object]:
    """Raw HTTP, as a script that ignores the API docs would: POST /gradio_api/call/<name>, read the event
    stream; returns ("complete", outputs) or ("error", message)."""
    import httpx

    with httpx.Client(timeout=timeout) as http:
        joined = http.post(f"{url}/gradio_api/call/{api_name}", json={"data": data}, headers=headers)
        if joined.status_code != 200:  # refused at the door, before the queue
            return "error", refusal(joined)
        text = http.get(f"{url}/gradio_api/call/{api_name}/{joined.json()['event_id']}").text
    kind = "error" if "event: error" in text else "complete"
    payload = text.strip().splitlines()[-1].removeprefix("data:").strip()
    data = json.loads(payload) if payload not in ("", "null") else None
    if kind == "error" and isinstance(data, dict):
        data = data.get("error")  # Gradio's own refusals (a server path not uploaded here) carry no text
    return kind, data


def refusal(response) -> str:
    """The message of a request the door refused (422, as a failed validator) or found too large (413)."""
    detail = response.json().get("detail")
    return " ".join(d.get("message", "") for d in detail) if isinstance(detail, list) else str(detail)


def upload(url: str, path) -> dict:
    """A file sent the way the page sends it: to /gradio_api/upload, then referenced by its server path."""
    import httpx

    with open(path, "rb") as fh:
        stored = httpx.post(f"{url}/gradio_api/upload", files={"files": (path.name, fh)}).json()[0]
    return {"path": stored, "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


def still_serving(url: str, part) -> float:
    from gradio_client import Client, handle_file

    start = time.perf_counter()
    _, verdict = Client(url + "/", verbose=False).predict(handle_file(str(part)), "binary", api_name="/detect")
    assert verdict["label"] == "blob"
    return time.perf_counter() - start


def test_files_not_uploaded_here_are_refused_before_any_download(server, part):
    from gradio_client import Client, handle_file

    client = Client(server + "/", verbose=False)
    start = time.perf_counter()
    # a URL that would hang if fetched: nothing listens on port 9 (discard) of a TEST-NET address
    with pytest.raises(Exception, match="Only files uploaded to this server"):
        client.predict(handle_file("http://192.0.2.1:9/slow.png"), "binary", api_name="/detect")
    assert time.perf_counter() - start < 5  # refused at once, not after a download attempt
    for path in ("http://192.0.2.1:9/x.png", "data:image/png;base64,iVBORw0KGgo=", "/etc/hostname", "../../x.png"):
        for api_name, data in (("detect", [{"path": path, "meta": {"_type": "gradio.FileData"}}, "binary"]),
                               ("ui_detect", [{"path": path, "meta": {"_type": "gradio.FileData"}}, "binary"])):
            kind, message = call(server, api_name, data)
            assert kind == "error", (api_name, path)
            assert ONLY_UPLOADS in str(message)  # refused at the door, with what to do instead
            assert "hostname" not in str(message) and "/work" not in str(message)
    assert still_serving(server, part) < 5


def test_private_explain_event_caps_methods_and_callers(server, part):
    picture = upload(server, part)
    start = time.perf_counter()
    kind, message = call(server, "ui_explain", [picture, "binary", ["gradcam"] * 10_000 + ["saliency"]])
    assert kind == "complete" and set(message[3]) == {"gradcam", "saliency"}  # repeats collapse to one run each
    assert time.perf_counter() - start < 30  # not 10,000 runs
    kind, message = call(server, "ui_explain", [picture, "binary", ["shap", "occlusion", "smoothgrad"]])
    assert kind == "error" and "at most 2 of the slow methods" in str(message)
    seven = ["anomaly_map", "retrieval", "gradcam", "gradcam_pp", "saliency", "attention_rollout", "occlusion"]
    kind, message = call(server, "ui_explain", [picture, "binary", seven])
    assert kind == "error" and "at most 6" in str(message)
    # the same caller (one address) past its explanation budget is told to wait, at once
    outcomes = [call(server, "explain", [upload(server, part), "binary", "gradcam"])[0] for _ in range(6)]
    assert "error" in outcomes
    kind, message = call(server, "explain", [upload(server, part), "binary", "gradcam"])
    assert kind == "error" and "try again in" in str(message)
    assert still_serving(server, part) < 5


def test_page_and_api_see_the_same_picture(server, part, tmp_path):
    """Transparency and 16-bit depth reach xai.io unconverted on the page as through /detect."""
    from gradio_client import Client, handle_file

    rgb = np.asarray(Image.open(part).convert("RGB"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[40:120, 40:120, 3] = 0  # a transparent window: white through xai.io, black if converted by PIL's RGB
    pictures = {"rgba.png": Image.fromarray(rgba, "RGBA"),
                "deep.png": Image.fromarray((rgb[..., 1].astype(np.uint16) * 257), "I;16")}
    client = Client(server + "/", verbose=False)
    for name, picture in pictures.items():
        path = tmp_path / name
        picture.save(path)
        _, api = client.predict(handle_file(str(path)), "binary", api_name="/detect")
        kind, page = call(server, "ui_detect", [upload(server, path), "binary"])
        assert kind == "complete"
        assert page[2]["scores"] == api["scores"], name


def test_unexpected_errors_reach_the_caller_as_one_line_with_an_id(catalogue, part, caplog, serve):
    """A bug's text never reaches a stranger, and neither does a library ValueError's (only UserError text does)."""
    from gradio_client import Client, handle_file

    class Broken(Catalogue):
        def detect(self, image, category):
            if category == "value":
                raise ValueError("high <= 0")  # what numpy said to a fit of very long thin pictures
            raise RuntimeError("/srv/secret/bundles/x: internal detail")

    broken = Broken()
    broken.inspectors = catalogue.inspectors
    with serve(broken) as (url, _):
        for category, secret in (("binary", "internal detail"), ("value", "high <= 0")):
            with pytest.raises(Exception) as info:
                Client(f"{url}/", verbose=False).predict(handle_file(str(part)), category, api_name="/detect")
            message = str(info.value)
            assert "error id" in message and "/srv/secret" not in message and secret not in message
            error_id = message.split("error id ")[1][:8]
            assert any(error_id in r.getMessage() for r in caplog.records)  # the full trace is in the server log


def test_json_carries_no_server_paths(catalogue, part, classifier_bundle):
    info = json.dumps(catalogue.info())
    assert str(classifier_bundle.parent) not in info
    _, payload = catalogue.explain(part, "binary", "retrieval")
    text = json.dumps(payload)
    assert str(classifier_bundle) not in text and '"thumbnail": "retrieval/' in text
    broken = Catalogue.from_sources(f"{classifier_bundle}/nope,{classifier_bundle}")
    assert all(str(classifier_bundle.parent) not in v for v in broken.info()["failed"].values())


def test_bundles_are_data_not_trust(classifier_bundle, tmp_path, trunk):
    """Example paths cannot leave the bundle; an index file is never parsed; one broken source stops only itself."""
    bundle = tmp_path / "evil"
    shutil.copytree(classifier_bundle, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["category"] = "evil"
    meta["examples"] = [{"file": "/etc/hostname", "label": "good"}, {"file": "../../../../etc/passwd", "label": "x"},
                        {"file": "retrieval/00000.jpg", "label": "good"}]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    catalogue = Catalogue.from_sources(str(bundle))
    assert [p for p, _ in catalogue.examples()] == [str((bundle / "retrieval/00000.jpg").resolve())]
    meta["components"]["patchcore"]["weights"] = "../../../../etc/passwd"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert "outside its folder" in Catalogue.from_sources(str(bundle)).failures[str(bundle)]
    tampered = tmp_path / "tampered"
    shutil.copytree(classifier_bundle, tampered)
    (tampered / "patchcore.faiss").write_bytes(b"\x00" * 64)  # a hostile index file is never parsed
    fine = Catalogue.from_sources(f"{tampered},{classifier_bundle}")
    assert not fine.failures
    picture = texture(np.random.default_rng(4))
    assert fine.get("binary").detect(picture).score == pytest.approx(
        Catalogue.from_sources(str(classifier_bundle)).get("binary").detect(picture).score, rel=1e-6)
    garbage = tmp_path / "garbage"
    shutil.copytree(classifier_bundle, garbage)
    (garbage / "bundle.json").write_text(json.dumps({"components": {"patchcore": {"config": {"layers": "x"}}}}))
    both = Catalogue.from_sources(f"{garbage},{classifier_bundle}")
    assert both.categories == ["binary"] and str(garbage) in both.failures


def test_explanations_are_thread_safe_under_concurrent_detects(catalogue):
    """While 4 threads run detect on different pictures, 20 gradcam / gradcam_pp / attention_rollout explanations
    each equal (to 1e-5) the same explanation computed alone, with no error."""
    inspector = catalogue.get("binary")
    rng = np.random.default_rng(9)
    pictures = [add_defect(texture(rng), rng, kind)[0] for kind in ("blob", "scratch", "blob", "scratch")]
    target = pictures[0]
    methods = ["gradcam", "gradcam_pp", "attention_rollout"]
    alone = {m: inspector.explain(target, m).heatmap for m in methods}
    stop = time.monotonic() + 120

    def detect_loop(picture):
        n = 0
        while time.monotonic() < stop and not done:
            inspector.detect(picture)
            n += 1
        return n

    done = False
    with ThreadPoolExecutor(4 + 2) as pool:
        loops = [pool.submit(detect_loop, p) for p in pictures]
        jobs = [pool.submit(inspector.explain, target, methods[i % 3]) for i in range(20)]
        results = [(methods[i % 3], job.result()) for i, job in enumerate(jobs)]
        done = True
        assert sum(loop.result() for loop in loops) > 0
    for method, exp in results:
        np.testing.assert_allclose(exp.heatmap, alone[method], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def space_server(catalogue, serve):
    """The app as on a Space: the proxy's x-forwarded-for names the caller, so one test plays several visitors."""
    with serve(catalogue, trusted_hops=1) as (url, space):
        yield url, space


def visitor(address: str) -> dict:
    return {"x-forwarded-for": f"203.0.113.1, {address}"}  # the client's own claim, then what the proxy appends


def test_one_caller_flooding_the_queue_does_not_turn_others_away(space_server, part):
    """Caller A posts 150 /detect calls at once; caller B's /detect still answers promptly, and most of A's are
    refused at the door (A's share of the queue, then A's rate) rather than queued."""
    import httpx

    server, _ = space_server
    picture = upload(server, part)
    a = visitor("198.51.100.7")
    with httpx.Client(timeout=60) as http:
        joins = [http.post(f"{server}/gradio_api/call/detect", json={"data": [picture, "binary"]}, headers=a)
                 for _ in range(150)]
        start = time.perf_counter()
        joined = http.post(f"{server}/gradio_api/call/detect", json={"data": [upload(server, part), "binary"]},
                           headers=visitor("198.51.100.8"))
        assert joined.status_code == 200, joined.text
        b = joined.json()["event_id"]
        text = http.get(f"{server}/gradio_api/call/detect/{b}").text
        waited = time.perf_counter() - start
        assert "event: complete" in text and waited < 20, (waited, text[-300:])
        outcomes = [http.get(f"{server}/gradio_api/call/detect/{j.json()['event_id']}").text
                    for j in joins if j.status_code == 200]
    refused = [refusal(j) for j in joins if j.status_code != 200]
    assert all("already have" in r or "Too many requests" in r for r in refused), refused[:3]
    assert len(refused) >= 50 and len(refused) + sum("event: complete" in o for o in outcomes) == 150


@pytest.mark.slow
def test_an_info_flood_from_24_threads_leaves_another_visitors_detect_alone(space_server, part):
    """One caller sends /info from 24 threads for 20 s while another calls /detect 14 times: all 14 are answered
    (before the door: "Queue is full" 9 times in 14)."""
    import httpx

    server, _ = space_server
    stop = time.monotonic() + 20
    flood = visitor("198.51.100.20")

    def flood_info() -> int:
        sent = 0
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop:
                joined = http.post(f"{server}/gradio_api/call/info", json={"data": []}, headers=flood)
                if joined.status_code == 200:
                    http.get(f"{server}/gradio_api/call/info/{joined.json()['event_id']}")
                sent += 1
        return sent

    with ThreadPoolExecutor(24) as pool:
        floods = [pool.submit(flood_info) for _ in range(24)]
        answers = []
        for _ in range(14):
            answers.append(call(server, "detect", [upload(server, part), "binary"], headers=visitor("198.51.100.21")))
            time.sleep(0.5)
        sent = sum(f.result() for f in floods)
    assert sent > 100  # it was a flood
    assert [kind for kind, _ in answers] == ["complete"] * 14, [m for k, m in answers if k != "complete"][:3]
    assert all(message[1]["label"] == "blob" for _, message in answers)


def resident_mb() -> float:
    """This process's resident memory (the served app runs in it), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_large_bodies_are_refused_at_the_door_without_being_held(space_server, part):
    """30 requests each carrying a 50 MB argument are refused before they are read, and the server's memory
    grows by less than 200 MB (before the door: about 3 GB, held after they ran); a chunked body without a
    declared length is cut off at the cap too."""
    import httpx

    server, space = space_server
    body = json.dumps({"data": [upload(server, part), "binary", "x" * 50_000_000]}).encode()
    before = resident_mb()
    refused = []
    for i in range(30):
        with httpx.Client(timeout=60) as http:
            try:
                answer = http.post(f"{server}/gradio_api/call/explain", content=body,
                                   headers={"content-type": "application/json", **visitor(f"198.51.100.{40 + i}")})
                refused.append(answer.status_code)
            except httpx.TransportError:  # the server answered and closed while the body was still going out
                refused.append(413)
    grown = resident_mb() - before
    assert refused == [413] * 30 and grown < 200, (refused, grown)

    def chunks():
        for _ in range(40):
            yield b"x" * 100_000  # 4 MB in all, no content-length

    with httpx.Client(timeout=60) as http:
        try:
            status = http.post(f"{server}/gradio_api/queue/join", content=chunks(),
                               headers={"content-type": "application/json"}).status_code
        except httpx.TransportError:
            status = 413
    assert status == 413
    assert still_serving(server, part) < 5
    assert space.door.limits.body_bytes < 50_000_000


def test_caller_rate_refills_and_forgets():
    from space.admission import CallerRate

    now = [0.0]
    rate = CallerRate(burst=2, every_s=10.0, clock=lambda: now[0])
    rate.take("a")
    rate.take("a")
    with pytest.raises(Exception, match="try again in 10 s"):
        rate.take("a")
    rate.take("b")  # another caller has its own bucket
    now[0] = 10.0
    rate.take("a")  # one token back after every_s


def test_the_doors_rules_need_no_server(tmp_path):
    """The table, the per-caller counts and the file rule are plain Python: no ASGI, no Gradio."""
    from space.admission import Door, Refused, only_uploaded

    now = [0.0]
    door = Door(clock=lambda: now[0])
    per_caller = door.limits.rule("detect").per_caller
    for _ in range(per_caller):
        door.admit("a", "detect", [None, "bottle"])
    with pytest.raises(Refused, match="queued or running"):
        door.admit("a", "detect", [None, "bottle"])
    door.admit("b", "detect", [None, "bottle"])  # another caller has their own count
    with door.running("a", "detect", [None, "bottle"]):
        assert door.pending("a") == per_caller
    assert door.pending("a") == per_caller - 1  # the job that ran is forgotten when it ends
    with pytest.raises(Refused, match="no such event"):
        door.admit("a", "not_an_event")
    only_uploaded({"data": [{"path": str(tmp_path / "part.png")}]}, tmp_path)
    for outside in ("https://example.com/a.png", "data:image/png;base64,AA", "/etc/passwd"):
        with pytest.raises(Refused, match="Only files uploaded"):
            only_uploaded({"data": [{"path": outside}]}, tmp_path)


def test_a_part_name_carries_no_markup_into_the_card_or_the_bundle():
    from space.parts import clean_name
    from training.card import render_card

    name = clean_name('<img src=x onerror=alert(1)> [click](javascript:alert(document.cookie)) `x`')
    assert not set(name) & set("<>[]:`\"") and len(name) <= 60
    card = render_card({"category": "<script>alert(1)</script>", "components": {}})
    assert "<script>" not in card and "&lt;script&gt;" in card


def test_a_bundles_numbers_are_bounded_before_anything_is_allocated(classifier_bundle, tmp_path):
    bundle = tmp_path / "greedy"
    shutil.copytree(classifier_bundle, bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["components"]["patchcore"]["config"].update(sigma=1e9, max_side=10**7)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    failed = Catalogue.from_sources(str(bundle)).failures[str(bundle)]
    assert "out of range" in failed and "sigma" in failed and "max_side" in failed


def test_one_caller_cannot_fill_the_disk_with_uploads(catalogue, serve, part, tmp_path):
    """Uploads are counted per caller over the sweeper's window: past the budget they are refused before they are
    read; another caller still uploads and inspects."""
    import httpx

    limits = Limits(upload_per_caller=12 << 20)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(np.random.default_rng(0).integers(0, 255, 5 << 20, dtype=np.uint8).tobytes())
    with serve(catalogue, limits=limits, trusted_hops=1) as (url, _):
        codes = []
        with httpx.Client(timeout=60) as http:
            for _ in range(4):
                with open(blob, "rb") as fh:
                    answer = http.post(f"{url}/gradio_api/upload", files={"files": ("blob.bin", fh)},
                                       headers=visitor("198.51.100.60"))
                codes.append(answer.status_code)
            assert codes == [200, 200, 429, 429], codes
            assert "at most 12 MB" in answer.json()["detail"]
            picture = upload(url, part)  # the loopback address is another caller
        kind, message = call(url, "detect", [picture, "binary"])
        assert kind == "complete" and message[1]["label"] == "blob"


def test_one_caller_cannot_push_everyone_out_of_the_session_store(space_server):
    """Fresh page-session ids cost a token each (20 at once, then one every 3 s): 60 from one address are mostly
    refused, so the store of 10,000 sessions keeps other visitors' page state."""
    import httpx

    server, space = space_server
    info = next(i for i, fn in space.demo.fns.items() if fn.api_name == "info")
    codes = []
    with httpx.Client(timeout=30) as http:
        for i in range(60):
            joined = http.post(f"{server}/gradio_api/queue/join", headers=visitor("198.51.100.70"),
                               json={"data": [], "fn_index": info, "session_hash": f"flood{i:04d}"})
            codes.append(joined.status_code if joined.status_code == 200 else refusal(joined))
    refused = [c for c in codes if c != 200]
    assert len(refused) >= 35 and all("new page sessions" in r or "already have" in r for r in refused)
    assert sum("new page sessions" in r for r in refused) >= 30
    assert space.settings.sessions >= 10_000


def test_one_callers_slow_explanations_do_not_hold_up_anothers_fast_one(space_server, part):
    """A sends three SHAP requests at once: one is taken (a caller has one slow explanation queued or running),
    the others refused at the door; B's anomaly map, sent while A's SHAP runs, is answered before it ends (before:
    four SHAP requests from one address made another visitor's anomaly map wait 52.9 s)."""
    import httpx

    server, _ = space_server
    a, b = visitor("198.51.100.80"), visitor("198.51.100.81")
    with httpx.Client(timeout=120) as http:
        joins = [http.post(f"{server}/gradio_api/call/explain", headers=a,
                           json={"data": [upload(server, part), "binary", "shap"]}) for _ in range(3)]
        assert [j.status_code for j in joins] == [200, 422, 422]
        assert "already have 1" in refusal(joins[1])

        def finish(api_name: str, event: str) -> float:
            text = http.get(f"{server}/gradio_api/call/{api_name}/{event}").text
            assert "event: complete" in text, text[-300:]
            return time.perf_counter()

        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(finish, "explain", joins[0].json()["event_id"])
            time.sleep(0.3)
            fast = http.post(f"{server}/gradio_api/call/explain", headers=b,
                             json={"data": [upload(server, part), "binary", "anomaly_map"]}).json()["event_id"]
            fast_done = finish("explain", fast)
            assert fast_done < slow.result()


def test_the_door_has_no_side_entrances(space_server):
    """What a hostile review found: a function index sent as text or a float is the same event to the door; a
    body nested deeper than Python's stack is answered, not a server error; only the upload route itself skips the
    body cap; nothing may swap a queued job's arguments through the streaming route; a join Gradio refuses is not
    counted against its caller."""
    import httpx

    server, space = space_server
    fit = next(i for i, fn in space.demo.fns.items() if fn.api_name == "fit")
    assert space.event_of(str(fit)) == space.event_of(float(fit)) == space.event_of(fit) == "fit"
    caller = visitor("198.51.100.90")
    with httpx.Client(timeout=30) as http:
        nested = http.post(f"{server}/gradio_api/queue/join", content=b"[" * 200_000,
                           headers={"content-type": "application/json", **caller})
        assert nested.status_code != 500
        big = http.post(f"{server}/gradio_api/call/upload", content=b"x" * (2 << 20), headers=caller)
        assert big.status_code == 413
        assert http.post(f"{server}/gradio_api/stream/abc", json={"data": []}, headers=caller).status_code == 404
        for _ in range(3):  # no session: Gradio refuses the join (400); the fit class's one place stays free
            refused = http.post(f"{server}/gradio_api/queue/join", json={"fn_index": fit, "data": []}, headers=caller)
            assert refused.status_code == 400
    assert space.door.pending("198.51.100.90") == 0


def test_the_caller_is_the_entry_the_trusted_proxies_wrote():
    """Behind N proxies that each append to x-forwarded-for, the caller is the Nth entry from the right, whatever
    the client wrote to its left; with no trusted proxy the header is ignored (anyone can send it). A Space has
    one proxy; DEFECT_XAI_TRUSTED_HOPS says otherwise."""
    from space.admission import caller_key
    from space.settings import Settings

    forged = {"x-forwarded-for": "1.2.3.4, 203.0.113.9, 10.0.0.5"}  # client's claim, the visitor, a first proxy
    assert caller_key("10.16.3.80", forged, 0) == "10.16.3.80"
    assert caller_key("10.16.3.80", forged, 1) == "10.0.0.5"
    assert caller_key("10.16.3.80", forged, 2) == "203.0.113.9"
    assert caller_key("10.16.3.80", {"x-forwarded-for": "203.0.113.9"}, 2) == "203.0.113.9"
    assert caller_key("10.16.3.80", {}, 1) == "10.16.3.80"
    assert caller_key(None, {"x-forwarded-for": "2001:db8:1:2:aaaa::1"}, 1) == "2001:db8:1:2::/64"
    assert Settings.from_env({}).trusted_hops == 0
    assert Settings.from_env({"SPACE_ID": "me/defect-xai"}).trusted_hops == 1
    assert Settings.from_env({"SPACE_ID": "me/x", "DEFECT_XAI_TRUSTED_HOPS": "2"}).trusted_hops == 2


def test_one_callers_long_fit_does_not_hold_up_another_visitors_fit(space_server, part, monkeypatch):
    """Caller A's fit runs on (as a 48-million-pixel fit would for two minutes); caller B's one-picture fit starts
    and answers at once, and A cannot start a second one meanwhile."""
    import threading

    from space import parts as parts_module

    server, _ = space_server
    a, b = visitor("198.51.100.70"), visitor("198.51.100.71")
    started, release = threading.Event(), threading.Event()

    def held_fit(self, files, name, caller, defects=None):
        if caller == "198.51.100.70":
            started.set()
            release.wait(60)
            raise parts_module.PartError("let go by the test")
        return {"category": "made-for-b", "name": name, "caller": caller}

    monkeypatch.setattr(parts_module.Parts, "fit", held_fit)
    picture = upload(server, part)
    holder = threading.Thread(target=call, args=(server, "fit", [[picture], "long"]), kwargs={"headers": a})
    holder.start()
    try:
        assert started.wait(60)
        begun = time.perf_counter()
        kind, answer = call(server, "fit", [[upload(server, part)], "quick"], headers=b)
        assert kind == "complete" and answer[0]["caller"] == "198.51.100.71", answer
        assert time.perf_counter() - begun < 10
        kind, message = call(server, "fit", [[upload(server, part)], "second"], headers=a)
        assert kind == "error" and "already have" in message
    finally:
        release.set()
        holder.join(60)


def test_reviews_from_many_addresses_teach_only_their_own_copies(classifier_bundle, serve, part, tmp_path):
    """Eight visitors each post three /feedback calls at once on the served category, with odd arguments beside:
    each gets at most one private copy (the rest are refused by their rate, never queued behind), the served
    category scores exactly as before, nobody's call reaches another's copy, odd arguments get their one-line
    message, and a normal /detect still answers."""
    from space.categories import CategoryLimits

    folder = tmp_path / "binary"
    shutil.copytree(classifier_bundle, folder)
    catalogue = Catalogue.from_sources(str(folder), CategoryLimits(capacity=16, per_caller=3))
    served_before = catalogue.get("binary").detect(part).score
    with serve(catalogue, trusted_hops=1) as (url, _):
        picture = upload(url, part)
        addresses = [f"198.51.100.{20 + i}" for i in range(8)]

        def flood(address: str) -> list:
            return [call(url, "feedback", [picture, "binary", "good"], headers=visitor(address)) for _ in range(3)]

        with ThreadPoolExecutor(8) as pool:
            outcomes = dict(zip(addresses, pool.map(flood, addresses)))
        copies = {}
        for address, results in outcomes.items():
            done = [data for kind, data in results if kind == "complete"]
            refused = [data for kind, data in results if kind == "error"]
            assert done and all("Too many requests" in str(r) for r in refused), (address, refused)
            copies[address] = {d[0]["category"] for d in done}
            assert len(copies[address]) == 1 and all(d[0]["copied_from"] == "binary" for d in done)
            assert "classifier" in done[0][0]["note"]  # the verdict is the head's: the answer says so
        assert len({c for ids in copies.values() for c in ids}) == len(addresses)  # one copy each, none shared
        owners = {c.id: c.owner for c in catalogue.made.held()}
        assert all(owners[next(iter(copies[a]))] == a for a in addresses)
        mine, theirs = addresses[0], next(iter(copies[addresses[1]]))
        time.sleep(1.1)
        kind, message = call(url, "undo_feedback", [theirs, "x"], headers=visitor(mine))
        assert kind == "error" and "Only whoever made this category" in str(message)
        for args in ([picture, "binary", 5], [picture, "binary", "x" * 5000], [picture, None, "good"],
                     [picture, ["binary"], "good"]):
            time.sleep(1.1)
            kind, message = call(url, "feedback", args, headers=visitor(addresses[2]))
            assert kind == "error" and "Something went wrong" not in str(message), (args[1:], message)
            assert len(str(message)) < 6000 and "Traceback" not in str(message)
        for share in (0.0, "nan", [0.1], 1e300):
            time.sleep(1.1)
            kind, message = call(url, "sensitivity", ["binary", share], headers=visitor(addresses[3]))
            assert kind == "error" and "Traceback" not in str(message), (share, message)
        assert catalogue.get("binary").detect(part).score == served_before
        assert catalogue.get("binary").reviews.entries == []
        assert still_serving(url, part) < 20
