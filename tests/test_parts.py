"""A visitor's own part: few-shot fitting and its calibration, the report card with the edge-detector control,
cancelling a training, and /fit through the launched app with its isolation, expiry, eviction and upload limits."""

from __future__ import annotations

import json
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from synthetic import add_defect, texture
from training.fit_patchcore import CROSS_FIT_BELOW, calibration_plan


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list:
    """Six good woven parts and one defective one, as PNG files (a visitor's upload)."""
    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("visitor")
    good = []
    for i in range(6):
        path = folder / f"good_{i}.png"
        Image.fromarray(texture(rng)).save(path)
        good.append(path)
    bad = folder / "bad.png"
    Image.fromarray(add_defect(texture(rng), rng, "blob")[0]).save(bad)
    return [*good, bad]


def test_calibration_plans_hold_every_picture_out_exactly_once():
    assert calibration_plan(1, 0.1, 0).method == "copies"
    for n in (2, 4, 16, CROSS_FIT_BELOW - 1):
        plan = calibration_plan(n, 0.1, 0)
        held = sorted(i for fold in plan.folds for i in fold)
        assert plan.method == "cross_fit" and held == list(range(n)) and plan.bank == list(range(n))
    plan = calibration_plan(200, 0.1, 0)  # the large-set plan: a held-out 10 %, never in the bank
    assert plan.method == "held_out" and len(plan.folds[0]) == 20 and not set(plan.folds[0]) & set(plan.bank)


def test_leave_one_out_false_alarms_are_measured_on_scores_the_threshold_never_saw():
    from training.calibration import leave_one_out_false_alarms

    assert leave_one_out_false_alarms(np.ones(2)) is None
    rng = np.random.default_rng(0)
    steady = rng.lognormal(0, 0.05, 40)
    assert leave_one_out_false_alarms(steady) <= 0.1
    assert leave_one_out_false_alarms(np.r_[steady, 10.0]) >= 1 / 41  # the outlier, scored without itself


@pytest.mark.parametrize("n", [1, 4])
def test_one_or_four_pictures_make_a_working_category(n, pictures, tmp_path, trunk):
    from training.part import fit_part
    from xai.bundle import load
    from xai.inspector import Inspector

    card = fit_part(pictures[:n], tmp_path / "bundle", "weave", trunk, defects=[pictures[-1]])
    inspector = Inspector(load(tmp_path / "bundle"), trunk)
    assert card["calibration"]["method"] == ("copies" if n == 1 else "cross_fit")
    assert card["calibration"]["scored_good_pictures"] == (4 if n == 1 else n)
    assert card["synthetic_anomalies"]["n"] == 4 * card["calibration"]["scored_good_pictures"]
    assert card["real_defects"]["n"] == 1
    assert ("warning" in card) == (n == 1)
    bad = inspector.detect(pictures[-1])
    unseen = inspector.detect(pictures[5])
    assert bad.is_defect and bad.score > unseen.score


def test_a_picture_that_is_not_one_is_named_in_the_error(pictures, tmp_path, trunk):
    from space.parts import PartError
    from training.cli import run_errors
    from training.part import fit_part

    junk = tmp_path / "003_notes.png"
    junk.write_text("not a picture")
    with pytest.raises(PartError, match="003_notes.png") as caught, run_errors(PartError):
        fit_part([*pictures[:2], junk], tmp_path / "bundle", "weave", trunk)
    assert str(tmp_path) not in str(caught.value)


@pytest.mark.slow
def test_training_reports_the_edge_control_and_stops_when_cancelled(pictures, tmp_path, trunk):
    from training.jobs import Cancelled, stop_when
    from training.part import fit_part, train_part
    from xai.explainers import report_card_methods

    bundle = tmp_path / "bundle"
    fit_part(pictures[:4], bundle, "weave", trunk)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled), stop_when(stop):
        train_part(bundle, pictures[:4], "weave", trunk, epochs=1)
    card = train_part(bundle, pictures[:4], "weave", trunk, epochs=1)
    table = card["explanations"]
    # every report-card method a part with a CNN head can run (attention rollout needs the transformer head)
    assert set(table["methods"]) == set(report_card_methods()) - {"attention_rollout"}
    # the slow one on the card (Score-CAM) is measured on its first few cases only, and says so
    assert table["methods"]["score_cam"]["n_images"] == 4 < table["n_images"]
    assert "n_images" not in table["methods"]["cam"]
    control = table["controls"]["edge_control"]
    assert control["randomization_similarity"] == pytest.approx(1.0)  # it ignores the weights by construction
    assert all(m["randomization_similarity"] is None or m["randomization_similarity"] < 1.0
               for m in table["methods"].values())


# -- through the launched app ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(classifier_bundle, serve):
    from space.admission import Limits
    from space.catalogue import Catalogue
    from space.categories import CategoryLimits

    caps = CategoryLimits(ttl_s=300, capacity=2, per_caller=5, max_pictures=4, max_fit_bytes=3_000_000)
    catalogue = Catalogue.from_sources(str(classifier_bundle), caps)
    with serve(catalogue, limits=Limits().relaxed(fit={"burst": 50, "every_s": 0.01}), categories=caps) as (url, _):
        yield url, catalogue


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def _fit(client, paths, name="weave"):
    from gradio_client import handle_file

    return client.predict([handle_file(str(p)) for p in paths], name, api_name="/fit")


def test_a_category_is_its_makers_until_it_goes(server, pictures, part):
    from gradio_client import handle_file

    url, catalogue = server
    maker, other = _client(url), _client(url)
    start = time.perf_counter()
    made = _fit(maker, pictures[:3], "my weave")
    assert made["n_images"] == 3 and made["name"] == "my weave" and len(made["category"]) == 22
    assert made["seconds"] <= time.perf_counter() - start and made["expires_at"]
    cid = made["category"]
    verdict = maker.predict(handle_file(str(part)), cid, api_name="/detect")[1]
    assert verdict["category"] == "my weave" and verdict["is_defect"]
    # listed nowhere public: not in /info, and another session's category list lacks it
    info = other.predict(api_name="/info")
    assert cid not in str(info) and "my weave" not in str(info)
    assert cid not in [v for _, v in catalogue.choices([])] and cid in [v for _, v in catalogue.choices([cid])]
    # ... but whoever holds the id may use it
    assert other.predict(handle_file(str(part)), cid, api_name="/detect")[1]["category"] == "my weave"
    # more categories than the cap: the maker's own least recently used goes, with its message; memory and disk
    # stay bounded
    later = [_fit(maker, pictures[:2], f"w{i}")["category"] for i in range(2)]
    with pytest.raises(Exception, match="replaced by its maker's newer one"):
        other.predict(handle_file(str(part)), cid, api_name="/detect")
    assert len(catalogue.made.held()) == 2 and len(list(catalogue.made.root.iterdir())) == 2
    # expiry: the clock moves past the time to live
    catalogue.made.clock = lambda: time.time() + 301
    try:
        with pytest.raises(Exception, match="expired"):
            maker.predict(handle_file(str(part)), later[-1], api_name="/detect")
    finally:
        catalogue.made.clock = time.time


def test_over_limit_uploads_are_refused_with_their_message(server, pictures, tmp_path):
    url, catalogue = server
    client = _client(url)
    before = set(catalogue.made.root.iterdir())
    with pytest.raises(Exception, match="at most 4"):
        _fit(client, pictures[:5])
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.png", b"\0" * 4_000_000)
    with pytest.raises(Exception, match="more than"):
        _fit(client, [bomb])
    with pytest.raises(Exception, match="Unknown category"):
        client.predict("A" * 22, api_name="/train_classifier")
    assert set(catalogue.made.root.iterdir()) == before  # nothing left behind by the refused fits


def test_a_caller_cannot_queue_heavy_jobs_behind_a_running_one(server, pictures, monkeypatch):
    from gradio_client import handle_file

    from space import parts as parts_module

    url, _ = server
    started, release = threading.Event(), threading.Event()

    def held_fit(self, *args, **kwargs):  # a fit that runs until the test lets it go
        started.set()
        release.wait(60)
        raise parts_module.PartError("let go by the test")

    monkeypatch.setattr(parts_module.Parts, "fit", held_fit)
    job = _client(url).submit([handle_file(str(pictures[0]))], "held", api_name="/fit")
    try:
        assert started.wait(60)
        for attempt in range(3):  # refused as they queue, from any session of the same caller, fit or training
            with pytest.raises(Exception, match="already have a fit or training"):
                if attempt < 2:
                    _fit(_client(url), pictures[:1])
                else:
                    _client(url).predict("A" * 22, api_name="/train_classifier")
    finally:
        release.set()
    with pytest.raises(Exception, match="let go by the test"):
        job.result(timeout=60)


@pytest.mark.slow
def test_training_through_the_api_enables_the_gradient_explainers(server, pictures, part):
    from gradio_client import handle_file

    url, catalogue = server
    client = _client(url)
    made = _fit(client, pictures[:3], "strap")
    assert made["train_estimate_s"] > 0
    with pytest.raises(Exception, match="cannot run 'gradcam'"):
        client.predict(handle_file(str(part)), made["category"], "gradcam", api_name="/explain")
    from space.parts import PartError, Parts

    with pytest.raises(PartError, match="Only whoever made this category"):  # its id is not enough
        Parts(catalogue).train(made["category"], "203.0.113.9")
    trained = client.predict(made["category"], api_name="/train_classifier")
    assert "gradcam" in trained["methods"] and trained["report"]["explanations"]["controls"]["edge_control"]
    _, explanation = client.predict(handle_file(str(part)), made["category"], "gradcam", api_name="/explain")
    assert explanation["method"] == "gradcam"
    with pytest.raises(Exception, match="already has its classifier"):
        client.predict(made["category"], api_name="/train_classifier")


def test_a_fit_is_bounded_by_its_pixels_not_its_picture_count(tmp_path):
    """Slivers of 8 x 30 px are each seen at 288 x 1,024: a few of them cost what hundreds of photos do."""
    from space.catalogue import Catalogue
    from space.categories import CategoryLimits
    from space.parts import PartError, Parts

    catalogue = Catalogue(CategoryLimits(max_fit_megapixels=1.0))
    slivers = []
    for i in range(4):
        slivers.append(tmp_path / f"s{i}.png")
        Image.fromarray(np.full((8, 30, 3), 90 + i, np.uint8)).save(slivers[-1])
    with pytest.raises(PartError, match="million pixels at the detector's view"):
        Parts(catalogue).fit([str(p) for p in slivers], "slivers", "a")
    assert list(catalogue.made.root.iterdir()) == []  # nothing left behind


def test_a_fit_that_runs_past_its_time_budget_is_stopped(tmp_path, pictures, monkeypatch):
    """The fitting slot is never held longer than the budget: a fit still running then stops at its next step
    (every loop of the fit is a progress bar), says why, and leaves nothing behind."""
    from space import parts as parts_module
    from space.catalogue import Catalogue
    from space.categories import CategoryLimits
    from training.jobs import progress

    steps = []

    def endless_fit(*args, **kwargs):  # a fit that would take 100 s, one progress step at a time
        for step in progress(range(10_000), "features"):
            steps.append(step)
            time.sleep(0.01)

    monkeypatch.setattr(parts_module, "fit_part", endless_fit)
    monkeypatch.setattr(parts_module.Parts, "trunk", lambda self: None)
    catalogue = Catalogue(CategoryLimits(max_fit_s=0.5))
    start = time.perf_counter()
    with pytest.raises(parts_module.PartError, match=r"past its time budget \(0.5 s\)"):
        parts_module.Parts(catalogue).fit([str(p) for p in pictures[:2]], "slow", "a")
    assert time.perf_counter() - start < 5 and 10 < len(steps) < 1_000
    assert list(catalogue.made.root.iterdir()) == []


def test_a_script_cancels_the_training_of_a_category_it_made(server, pictures, monkeypatch):
    """/cancel_training stops a training started through the API (its maker only); the category keeps what it
    had and can still be used."""
    from gradio_client import handle_file

    from space import parts as parts_module
    from training.jobs import progress

    def endless_training(*args, **kwargs):
        for _ in progress(range(100_000), "train cnn", unit="epoch"):
            time.sleep(0.01)

    monkeypatch.setattr(parts_module, "train_part", endless_training)
    url, catalogue = server
    client = _client(url)
    cid = _fit(client, pictures[:2], "belt")["category"]
    assert client.predict(cid, api_name="/cancel_training")["cancelled"] is False  # nothing is training yet
    job = client.submit(cid, api_name="/train_classifier")
    deadline = time.monotonic() + 60
    while not (answer := client.predict(cid, api_name="/cancel_training"))["cancelled"]:
        assert time.monotonic() < deadline and not job.done(), answer
        time.sleep(0.2)
    with pytest.raises(Exception, match="Training cancelled"):
        job.result(timeout=60)
    with pytest.raises(parts_module.PartError, match="Only whoever made this category"):
        parts_module.Parts(catalogue).cancel(cid, "203.0.113.9")
    assert client.predict("A" * 22, api_name="/cancel_training")["cancelled"] is False
    assert client.predict(handle_file(str(pictures[-1])), cid, api_name="/detect")[1]["category"] == "belt"


def test_kept_categories_are_not_listed_and_stay_their_makers(classifier_bundle, serve, pictures, part, tmp_path):
    """With DEFECT_XAI_CATEGORY_DIR, /info lists no kept id unless the operator says so, and after a restart the
    category is still its maker's: another caller can use it by id but not train, cancel or download it."""
    from space.catalogue import Catalogue
    from space.categories import CategoryLimits
    from space.parts import PartError, Parts

    kept = tmp_path / "kept"
    catalogue = Catalogue.from_sources(str(classifier_bundle), category_dir=kept)
    with serve(catalogue, category_dir=str(kept)) as (url, _):
        client = _client(url)
        cid = _fit(client, pictures[:2], "gear")["category"]
        assert cid not in json.dumps(client.predict(api_name="/info"))
    restarted = Catalogue.from_sources(str(classifier_bundle), category_dir=kept)
    assert restarted.made.shared() == {} and restarted.made.kept() == {cid: "gear"}
    assert restarted.get(cid).detect(part).is_defect  # by id, as before the restart
    parts = Parts(restarted)
    for attempt in (parts.train, parts.cancel, parts.download):
        with pytest.raises(PartError, match="Only whoever made this category"):
            attempt(cid, "203.0.113.9")
    assert parts.download(cid, "127.0.0.1").endswith(".zip")  # its maker (the loopback caller) may
    listed = Catalogue.from_sources(str(classifier_bundle), CategoryLimits(list_kept=True), category_dir=kept)
    assert listed.info()["shared_categories"] == {cid: "gear"}
