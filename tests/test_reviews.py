"""Reviews teach a fitted detector without a refit (xai.reviews): a false alarm reviewed good is answered good,
undo gives back exactly the scores from before, reviews survive a save and a reload, the bank's growth is capped,
and the sensitivity moves the threshold along the model of good scores."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from synthetic import add_defect, texture
from xai.false_alarms import threshold_for
from xai.reviews import ReviewError, covering_rows, in_words


def brighter(seed: int) -> np.ndarray:
    """A good weave under brighter light: what the bank never saw, so the detector flags it."""
    picture = texture(np.random.default_rng(seed)).astype(np.float32) * 1.3 + 20
    return np.clip(picture, 0, 255).astype(np.uint8)


@pytest.fixture
def reviewed(texture_bundle, trunk, tmp_path):
    """An inspector over a private copy of the weave bundle (reviews write into its folder)."""
    from xai.bundle import load
    from xai.inspector import Inspector

    folder = tmp_path / "weave"
    shutil.copytree(texture_bundle, folder)
    return Inspector(load(folder), trunk)


def test_covering_rows_bring_every_patch_to_the_target():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200, 16)).astype(np.float32)
    distances = rng.uniform(0.5, 3.0, 200)
    factors = np.ones(200)
    picked = covering_rows(rows, distances, factors, target=1.0)
    assert 0 < len(picked) < 200
    after = np.minimum(distances, np.linalg.norm(rows[:, None] - rows[picked][None], axis=-1).min(axis=1))
    assert after.max() <= 1.0 + 1e-5
    assert len(covering_rows(rows, distances, factors, target=5.0)) == 0  # already covered: nothing added


def test_a_false_alarm_reviewed_good_is_answered_good_and_undo_restores_it_exactly(reviewed):
    alarm, other = brighter(1), brighter(2)
    before, other_before = reviewed.detect(alarm), reviewed.detect(other)
    assert before.is_defect, "the brighter weave should be a false alarm of the fitted detector"
    review = reviewed.review(alarm, "good")
    after = reviewed.detect(alarm)
    assert not after.is_defect and after.score == pytest.approx(review.score_after, abs=1e-5)
    assert after.score <= np.median(reviewed.good_scores()) + 1e-5  # a typical good picture's score at most
    assert 0 < review.rows < after.anomaly_map.size  # some of its patches, not all
    assert reviewed.sensitivity()["bank_rows_added"] == review.rows
    assert reviewed.detect(other).score < other_before.score  # the same lighting on another part is learned too
    defect, _ = add_defect(brighter(3), np.random.default_rng(3), "blob")
    assert reviewed.detect(defect).is_defect  # and a defect under that light is still found
    reviewed.undo_review(review.id)
    again = reviewed.detect(alarm)
    assert again.score == before.score and np.array_equal(again.anomaly_map, before.anomaly_map)
    assert reviewed.detect(other).score == other_before.score
    with pytest.raises(ReviewError, match="No review"):
        reviewed.undo_review(review.id)


def test_reviews_survive_a_save_and_a_reload(reviewed, trunk):
    from xai.bundle import load
    from xai.inspector import Inspector

    alarm = brighter(4)
    good = reviewed.review(alarm, "good", name="alarm.png")
    defect_picture, _ = add_defect(texture(np.random.default_rng(5)), np.random.default_rng(5), "scratch")
    bad = reviewed.review(defect_picture, "defect")
    assert bad.rows == 0 and bad.score_after == bad.score_before
    reviewed.set_sensitivity(0.1)
    reviewed.save_reviews()
    loaded = Inspector(load(reviewed.bundle.path), trunk)
    assert [e.id for e in loaded.reviews.entries] == [good.id, bad.id]
    assert loaded.detect(alarm).score == reviewed.detect(alarm).score
    assert loaded.threshold == reviewed.threshold and loaded.sensitivity()["set_by"] == "user"
    assert loaded.sensitivity()["reviewed_defects"] == 1
    loaded.undo_review(good.id)
    loaded.save_reviews()
    assert not (reviewed.bundle.path / "reviews.safetensors").exists()  # no rows left: no file


def test_the_bank_grown_by_reviews_keeps_its_cap(reviewed, monkeypatch):
    import xai.inspector

    monkeypatch.setattr(xai.inspector, "rows_cap", lambda bank: 1)
    with pytest.raises(ReviewError, match="holds 1 at most"):
        reviewed.review(brighter(6), "good")
    assert reviewed.reviews.entries == [] and reviewed.sensitivity()["bank_rows_added"] == 0
    with pytest.raises(ReviewError, match="verdict"):
        reviewed.review(brighter(6), "maybe")


def test_the_sensitivity_moves_the_threshold_along_the_good_scores(reviewed):
    good = reviewed.good_scores()
    fitted = reviewed.threshold
    strict = reviewed.set_sensitivity(0.01)
    assert strict["threshold"] == pytest.approx(threshold_for(np.asarray(good), 0.01), abs=1e-6)
    loose = reviewed.set_sensitivity(0.2)
    assert loose["threshold"] < strict["threshold"] and reviewed.threshold == pytest.approx(loose["threshold"])
    assert loose["in_words"] == "about 1 good part in 5 flagged" == in_words(0.2)
    for share in (0.0, 0.9, "0.1", True, float("nan")):
        with pytest.raises(ReviewError, match="share of good parts"):
            reviewed.set_sensitivity(share)
    assert reviewed.set_sensitivity(None)["set_by"] == "fit" and reviewed.threshold == fitted


# -- through the launched app ------------------------------------------------------------------------
def visitor(address: str) -> dict:
    return {"x-forwarded-for": f"203.0.113.1, {address}"}  # the client's claim, then what the proxy appends


@pytest.fixture
def served(texture_bundle, tmp_path):
    """The weave served as a category of the app (a copy: the session's bundle stays as it was)."""
    folder = tmp_path / "served" / "weave"
    shutil.copytree(texture_bundle, folder)
    return folder


def _save(picture: np.ndarray, path):
    from PIL import Image

    Image.fromarray(picture).save(path)
    return path


def test_feedback_through_the_app_teaches_only_the_callers_own_copy(served, serve, tmp_path):
    """A visitor's false alarm on a served category: /feedback makes the visitor's copy, which answers the picture
    good; the served category is untouched; another visitor can neither teach nor undo on that copy; undo gives
    back exactly the score from before; the sensitivity shows in /detect and /info, and a flood is refused."""
    from gradio_client import Client, handle_file

    from space.catalogue import Catalogue

    alarm = handle_file(str(_save(brighter(7), tmp_path / "alarm.png")))
    catalogue = Catalogue.from_sources(str(served))
    with serve(catalogue, trusted_hops=1) as (url, _):
        maker = Client(url, verbose=False, headers=visitor("198.51.100.7"))
        stranger = Client(url, verbose=False, headers=visitor("198.51.100.8"))
        before = maker.predict(alarm, "weave", api_name="/detect")[1]
        assert before["is_defect"] and before["sensitivity"]["set_by"] == "fit"
        taught = maker.predict(alarm, "weave", "good", api_name="/feedback")
        assert taught["copied_from"] == "weave" and taught["category"] != "weave"
        assert taught["score_before"] == pytest.approx(before["score"], abs=1e-5)
        assert not taught["is_defect_after"] and taught["rows_added"] > 0
        cid = taught["category"]
        after = maker.predict(alarm, cid, api_name="/detect")[1]
        assert not after["is_defect"] and after["score"] == pytest.approx(taught["score_after"], abs=1e-5)
        assert after["sensitivity"]["reviewed_good"] == 1
        # the served category is as it was, for everyone
        assert stranger.predict(alarm, "weave", api_name="/detect")[1]["score"] == before["score"]
        # a stranger holding the id may use it, not teach or undo it
        for attempt in (lambda: stranger.predict(alarm, cid, "defect", api_name="/feedback"),
                        lambda: stranger.predict(cid, taught["feedback_id"], api_name="/undo_feedback"),
                        lambda: stranger.predict(cid, 0.2, api_name="/sensitivity")):
            time.sleep(1.1)  # one feedback a second per caller
            with pytest.raises(Exception, match="Only whoever made this category"):
                attempt()
        time.sleep(1.1)
        strict = maker.predict(cid, 0.01, api_name="/sensitivity")
        assert strict["category"] == cid and strict["sensitivity"]["set_by"] == "user"
        info = maker.predict(api_name="/info")["categories"]["weave"]
        assert info["sensitivity"]["set_by"] == "fit"  # the served one keeps its own
        time.sleep(1.1)
        undone = maker.predict(cid, taught["feedback_id"], api_name="/undo_feedback")
        assert undone["undone"] and undone["bank_size"] == taught["bank_size"] - taught["rows_added"]
        assert maker.predict(alarm, cid, api_name="/detect")[1]["score"] == before["score"]
        time.sleep(1.1)
        again = maker.predict(alarm, "weave", "defect", api_name="/feedback")  # the same copy, not another
        assert again["category"] == cid and again["reviews"] == 1
        with pytest.raises(Exception, match="Too many requests"):
            for _ in range(4):
                maker.predict(alarm, cid, "defect", api_name="/feedback")


def test_feedback_survives_a_restart_where_categories_are_kept(served, serve, tmp_path):
    from gradio_client import Client, handle_file

    from space.catalogue import Catalogue

    alarm = _save(brighter(8), tmp_path / "alarm.png")
    kept = tmp_path / "kept"
    with serve(Catalogue.from_sources(str(served), category_dir=kept), category_dir=str(kept)) as (url, _):
        client = Client(url, verbose=False)
        taught = client.predict(handle_file(str(alarm)), "weave", "good", api_name="/feedback")
        score = client.predict(handle_file(str(alarm)), taught["category"], api_name="/detect")[1]["score"]
    restarted = Catalogue.from_sources(str(served), category_dir=kept)
    inspector = restarted.get(taught["category"])
    assert [e.id for e in inspector.reviews.entries] == [taught["feedback_id"]]
    assert inspector.detect(alarm).score == pytest.approx(score, abs=1e-6) and not inspector.detect(alarm).is_defect
