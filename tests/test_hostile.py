"""The public Space played by an attacker: the app launched on a free port, called through gradio_client and raw
HTTP. Each hole is refused with its message (or handled), and a normal /detect still answers right after."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from test_app import free_port

from synthetic import add_defect, texture
from xai.service import Catalogue
from xai.web import ONLY_UPLOADS, Limits


@pytest.fixture(scope="module")
def catalogue(classifier_bundle):
    return Catalogue.from_sources(str(classifier_bundle))


@pytest.fixture(scope="module")
def server(catalogue):
    from app import build_app, launch_options

    demo = build_app(catalogue, limits=Limits(detect_per_caller=4, explain_burst=4, explain_every_s=60.0))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    yield f"http://127.0.0.1:{port}"
    demo.close()


def call(url: str, api_name: str, data: list, timeout: float = 60.0) -> tuple[str, object]:
    """Raw HTTP, as a script that ignores the API docs would: POST /gradio_api/call/<name>, read the event
    stream; returns ("complete", outputs) or ("error", message)."""
    import httpx

    with httpx.Client(timeout=timeout) as http:
        event = http.post(f"{url}/gradio_api/call/{api_name}", json={"data": data}).json()["event_id"]
        text = http.get(f"{url}/gradio_api/call/{api_name}/{event}").text
    kind = "error" if "event: error" in text else "complete"
    payload = text.strip().splitlines()[-1].removeprefix("data:").strip()
    data = json.loads(payload) if payload not in ("", "null") else None
    if kind == "error" and isinstance(data, dict):
        data = data.get("error")  # Gradio's own refusals (a server path not uploaded here) carry no text
    return kind, data


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
            assert message is None or ONLY_UPLOADS in str(message) or "path" in str(message).lower()
            assert "hostname" not in str(message or "")
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


def test_unexpected_errors_reach_the_caller_as_one_line_with_an_id(catalogue, part, caplog):
    from gradio_client import Client, handle_file

    from app import build_app, launch_options

    class Broken(Catalogue):
        def detect(self, image, category):
            raise RuntimeError("/srv/secret/bundles/x: internal detail")

    broken = Broken(catalogue.inspectors, {})
    demo = build_app(broken)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        with pytest.raises(Exception) as info:
            Client(f"http://127.0.0.1:{port}/", verbose=False).predict(handle_file(str(part)), "binary",
                                                                       api_name="/detect")
        message = str(info.value)
        assert "error id" in message and "/srv/secret" not in message and "internal detail" not in message
        error_id = message.split("error id ")[1][:8]
        assert any(error_id in r.getMessage() for r in caplog.records)  # the full trace is in the server log
    finally:
        demo.close()


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


def test_one_caller_flooding_the_queue_does_not_turn_others_away(server, part, monkeypatch):
    """Caller A queues 150 /detect calls at once; caller B's /detect still answers promptly, and many of A's are
    refused by A's own rate limit rather than run (addresses as a Space's proxy reports them)."""
    import httpx

    monkeypatch.setenv("SPACE_ID", "test/space")  # trust x-forwarded-for, as on a Space
    picture = upload(server, part)
    a = {"x-forwarded-for": "198.51.100.7, 203.0.113.1"}
    with httpx.Client(timeout=60) as http:
        events = [http.post(f"{server}/gradio_api/call/detect", json={"data": [picture, "binary"]}, headers=a)
                  .json()["event_id"] for _ in range(150)]
        start = time.perf_counter()
        b = http.post(f"{server}/gradio_api/call/detect", json={"data": [upload(server, part), "binary"]},
                      headers={"x-forwarded-for": "203.0.113.2"}).json()["event_id"]
        text = http.get(f"{server}/gradio_api/call/detect/{b}").text
        waited = time.perf_counter() - start
        assert "event: complete" in text and waited < 20, (waited, text[-300:])
        outcomes = [http.get(f"{server}/gradio_api/call/detect/{e}").text for e in events]
    refused = sum("Too many requests" in o for o in outcomes)
    # A's bucket: 15 at once, then 4 a second while the flood drains; the rest are refused without running
    assert refused >= 50 and refused + sum("event: complete" in o for o in outcomes) == 150


def test_caller_rate_refills_and_forgets():
    from xai.web import CallerRate

    now = [0.0]
    rate = CallerRate(burst=2, every_s=10.0, clock=lambda: now[0])
    rate.take("a")
    rate.take("a")
    with pytest.raises(Exception, match="try again in 10 s"):
        rate.take("a")
    rate.take("b")  # another caller has its own bucket
    now[0] = 10.0
    rate.take("a")  # one token back after every_s
