"""Batch inspection: Inspector.detect_batch against one picture at a time, the `training.inspect` command (rows,
unreadable files, maps, report, resume, reviews from a CSV, the report's review queue) and its Ray Data engine, on
generated pictures."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import digest
from synthetic import add_defect, texture
from training import inspect as inspect_cli
from training.batch.results import MAP_SCALE, ResultsFolder, columns, frame
from training.batch.sources import list_inputs
from training.cli import run
from xai.bundle_meta import BundleMeta


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """A day of generated good and blob pictures (another seed than the bundle's: none is in its memory bank, where
    distances near zero would make the map's square root amplify float noise), three shapes, and one file that is
    not a picture."""
    from synthetic import write_imagefolder

    folder = write_imagefolder(tmp_path_factory.mktemp("batch") / "parts", per_class=8, classes=("good", "blob"),
                               seed=42)
    for i, path in enumerate(sorted((folder / "blob").glob("*.png"))[:4]):
        with Image.open(path) as picture:  # two other shapes: a landscape crop and a portrait stretch
            size = (picture.width, picture.height * 2 // 3) if i % 2 else (picture.width * 3 // 4, picture.height)
            picture.resize(size).save(path)
    (folder / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    return folder


@pytest.fixture(scope="module")
def inspector(classifier_bundle):
    from xai.inspector import Inspector

    return Inspector.from_source(str(classifier_bundle))


def test_a_batch_gives_what_one_picture_at_a_time_gives(inspector, mixed_folder):
    """Every field of every Detection (all components' scores, probabilities, maps) equals the single-picture
    result; pictures of three shapes are grouped, and the unreadable one is its error, in its place."""
    from xai.io import ImageInputError

    paths = sorted((mixed_folder / "blob").glob("*.png"))[:6] + [mixed_folder / "good" / "broken.png"] + \
        sorted((mixed_folder / "good").glob("0*.png"))[:3]
    batch = inspector.detect_batch(paths)
    assert len(batch) == len(paths) and isinstance(batch[6], ImageInputError)
    assert len({d.anomaly_map.shape for d in batch if not isinstance(d, Exception)}) == 3
    for path, got in zip(paths, batch):
        if isinstance(got, Exception):
            with pytest.raises(ImageInputError):
                inspector.detect(path)
            continue
        alone = inspector.detect(path)
        assert (got.label, got.is_defect, got.decided_by, got.image_size, got.threshold) == \
            (alone.label, alone.is_defect, alone.decided_by, alone.image_size, alone.threshold)
        assert got.scores.keys() == alone.scores.keys() == {"patchcore", "classifier_cnn", "classifier_vit"}
        for name in alone.scores:
            assert got.scores[name] == pytest.approx(alone.scores[name], abs=1e-5)
        for head, probs in alone.class_probabilities.items():
            assert got.class_probabilities[head] == pytest.approx(probs, abs=1e-5)
        np.testing.assert_allclose(got.anomaly_map, alone.anomaly_map, atol=1e-5, rtol=0)
        assert got.timings_ms.keys() == alone.timings_ms.keys()


def test_inputs_are_folders_zips_globs_and_lists(mixed_folder, tmp_path):
    import zipfile

    from training.data import DataError

    items = list_inputs(str(mixed_folder))
    assert {i.truth for i in items} == {"good", "blob"} and len(items) == len(list(mixed_folder.rglob("*.png")))
    archive = tmp_path / "day.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((mixed_folder / "blob").glob("*.png"))[:3]:
            z.write(path, f"line1/{path.name}")
        z.writestr("notes.txt", "not a picture")
    assert [i.path.rpartition("::")[2] for i in list_inputs(str(archive))] == \
        [f"line1/{p.name}" for p in sorted((mixed_folder / "blob").glob("*.png"))[:3]]
    assert len(list_inputs(f"{mixed_folder}/good/0*.png")) == len(list((mixed_folder / "good").glob("0*.png")))
    listing = tmp_path / "todo.txt"
    listing.write_text("# yesterday\n" + "\n".join(str(p) for p in sorted((mixed_folder / "good").glob("*"))[:2]))
    assert len(list_inputs(str(listing))) == 2
    with pytest.raises(DataError, match="names no pictures"):
        list_inputs(str(tmp_path / "*.jpg"))


def test_the_command_writes_rows_maps_and_a_report(classifier_bundle, mixed_folder, tmp_path, inspector):
    import pandas as pd

    out = tmp_path / "out"
    code = inspect_cli.main(["--bundle", str(classifier_bundle), "--input", str(mixed_folder), "--out", str(out),
                             "--batch-size", "4", "--maps", "--overlays", "--top", "3"])
    assert code == 0
    table = pd.read_parquet(out / "results.parquet")
    csv = pd.read_csv(out / "results.csv", keep_default_na=False)
    items = list_inputs(str(mixed_folder))
    assert list(table.columns) == columns(["patchcore", "classifier_cnn", "classifier_vit"], labelled=True)
    assert list(table["path"]) == [i.path for i in items] == list(csv["path"])
    broken = table[table["path"].str.endswith("broken.png")].iloc[0]
    assert broken["error"] and pd.isna(broken["score"]) and broken["truth"] == "good"
    readable = table[table["error"] == ""]
    assert readable["score"].notna().all() and (readable["ms"] > 0).all()
    first = readable.iloc[0]
    alone = inspector.detect(first["path"])
    assert first["score"] == pytest.approx(alone.score, abs=1e-5) and bool(first["is_defect"]) == alone.is_defect
    assert first["score_patchcore"] == pytest.approx(alone.scores["patchcore"], abs=1e-5)
    # the raw map, 16-bit: value / MAP_SCALE x threshold is the map
    maps = sorted((out / "maps").glob("*.png"))
    assert len(maps) == len(readable) == len(list((out / "overlays").glob("*.jpg")))
    with Image.open(maps[0]) as stored:
        assert stored.mode.startswith("I;16") or stored.mode == "I"
        values = np.asarray(stored, dtype=np.float64) / MAP_SCALE * alone.thresholds["patchcore"]
    ceiling = 65535 / MAP_SCALE * alone.thresholds["patchcore"]
    np.testing.assert_allclose(values, np.minimum(alone.anomaly_map, ceiling),
                               atol=alone.thresholds["patchcore"] / MAP_SCALE)
    page = (out / "report.html").read_text()
    assert "could not be read" in page and "broken.png" in page and "image AUROC" in page
    assert page.count("data:image/jpeg;base64") == 3 and "score histogram" in page and "blob" in page


def test_an_interrupted_run_resumes_without_inspecting_a_picture_twice(classifier_bundle, mixed_folder, tmp_path,
                                                                      monkeypatch):
    import pandas as pd

    from xai.inspector import Inspector

    seen: list[int] = []
    real = Inspector.detect_batch

    def counted(self, sources):
        seen.append(len(sources))
        return real(self, sources)

    monkeypatch.setattr(Inspector, "detect_batch", counted)
    real_append, appended = ResultsFolder.append, []

    def append_then_die(self, data):  # the machine goes down after the second batch is written
        real_append(self, data)
        appended.append(len(data))
        if len(appended) == 2:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    argv = ["--bundle", str(classifier_bundle), "--input", str(mixed_folder), "--out", str(out), "--batch-size", "5"]
    monkeypatch.setattr(ResultsFolder, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        inspect_cli.main(argv)
    assert not (out / "results.parquet").exists() and sum(appended) == 10
    monkeypatch.setattr(ResultsFolder, "append", real_append)
    first_run = sum(seen)
    assert inspect_cli.main(argv) == 0
    table = pd.read_parquet(out / "results.parquet")
    total = len(list_inputs(str(mixed_folder)))
    assert len(table) == total and table["path"].is_unique
    # the second run inspects exactly what the first did not write (batches in flight at the interrupt are lost
    # and done again; the broken file, last in order, is never a detection)
    assert first_run >= 10 and sum(seen) - first_run == total - 10 - 1
    assert inspect_cli.main(argv) == 0 and sum(seen) - first_run == total - 11  # a finished run: nothing again


WORKER_THREADS = """
import faiss  # loaded before torch: FAISS then keeps its own OpenMP runtime, whose setting holds per thread
import sys
import threading

import torch

from training.batch.local import inspect_local
from training.batch.sources import list_inputs
from xai.inspector import Inspector

seen, real = [], Inspector.detect_batch


def recorded(self, sources):
    seen.append((threading.current_thread().name, torch.get_num_threads(), faiss.omp_get_max_threads()))
    return real(self, sources)


Inspector.detect_batch = recorded
inspect_local(sys.argv[1], list(enumerate(list_inputs(sys.argv[2])))[:8], 2, None, lambda rows: None, workers=2)
print(repr(seen))
"""


def test_the_local_engines_workers_run_torch_and_faiss_on_one_thread_each(classifier_bundle, mixed_folder, tmp_path):
    """One one-thread pipeline a core: a worker that left FAISS at its default would search on every core while its
    neighbour does the same (a fresh process, so that FAISS's runtime is its own, as in a script that imports it
    first)."""
    import ast
    import os
    import subprocess
    from pathlib import Path

    script = tmp_path / "workers.py"
    script.write_text(WORKER_THREADS)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "2"}  # OpenMP's default: two threads
    done = subprocess.run([sys.executable, str(script), str(classifier_bundle), str(mixed_folder)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    seen = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert len(seen) == 4 and all(name.startswith("inspect") for name, _, _ in seen)
    assert {(t, omp) for _, t, omp in seen} == {(1, 1)}


def test_without_ray_the_engine_says_how_to_install_it(classifier_bundle, mixed_folder, tmp_path, monkeypatch,
                                                      capsys):
    from training.cli import run

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    argv = ["--bundle", str(classifier_bundle), "--input", str(mixed_folder), "--out", str(tmp_path / "o"),
            "--engine", "ray"]
    assert run(inspect_cli.main, argv) == 2
    assert "pip install -r requirements-ray.txt" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_data_gives_the_local_engines_rows(classifier_bundle, mixed_folder, tmp_path):
    """The same folder (with its unreadable file) through both engines: the same rows, scores equal to 1e-5."""
    pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")
    import pandas as pd

    common = ["--bundle", str(classifier_bundle), "--input", str(mixed_folder), "--batch-size", "4"]
    assert inspect_cli.main([*common, "--out", str(tmp_path / "local")]) == 0
    assert inspect_cli.main([*common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--maps"]) == 0
    local = pd.read_parquet(tmp_path / "local" / "results.parquet")
    ray = pd.read_parquet(tmp_path / "ray" / "results.parquet")
    assert list(local.columns) == list(ray.columns) and list(local["path"]) == list(ray["path"])
    exact = ["path", "width", "height", "label", "is_defect", "component", "error", "truth", "truth_is_defect",
             "threshold"]
    pd.testing.assert_frame_equal(local[exact], ray[exact])
    for name in [c for c in local.columns if c.startswith("score")]:
        np.testing.assert_allclose(local[name].to_numpy(float), ray[name].to_numpy(float), atol=1e-5, equal_nan=True)
    assert len(list((tmp_path / "ray" / "maps").glob("*.png"))) == int((ray["error"] == "").sum())
    assert json.loads(json.dumps(ray["error"].tolist()))  # plain strings, every row


def test_detect_batch_through_the_app_gives_the_commands_rows(classifier_bundle, serve, mixed_folder, tmp_path):
    """/detect_batch with files and a zip: a row per picture as `training.inspect` writes it (scores equal to
    /detect's to 1e-5), the unreadable file a row with its message, no server path anywhere, the CSV with every
    column, the gallery's most anomalous first; too many pictures are refused with the cap."""
    import zipfile

    import pandas as pd
    from gradio_client import Client, handle_file

    from space.batches import BatchLimits
    from space.catalogue import Catalogue

    blobs = sorted((mixed_folder / "blob").glob("*.png"))
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((mixed_folder / "good").glob("0*.png"))[:2]:
            z.write(path, f"shift2/{path.name}")
    sent = [*blobs[:4], mixed_folder / "good" / "broken.png", archive]
    catalogue = Catalogue.from_sources(str(classifier_bundle))
    with serve(catalogue, batch=BatchLimits(max_pictures=7, gallery=3)) as (url, _):
        client = Client(url, verbose=False)
        table, csv, gallery = client.predict([handle_file(str(p)) for p in sent], "binary", api_name="/detect_batch")
        _, verdict = client.predict(handle_file(str(blobs[0])), "binary", api_name="/detect")
        with pytest.raises(Exception, match="at most 7 in one batch"):
            client.predict([handle_file(str(p)) for p in blobs[:8]], "binary", api_name="/detect_batch")
    rows = pd.DataFrame(table["data"], columns=table["headers"])
    assert list(rows["picture"]) == [p.name for p in blobs[:4]] + ["broken.png", "000.png", "001.png"]
    broken = rows[rows["picture"] == "broken.png"].iloc[0]
    assert broken["error"].startswith("The file is not an image") and pd.isna(broken["score"])
    assert str(tmp_path) not in json.dumps(table) and "/tmp" not in json.dumps(table)
    full = pd.read_csv(csv, keep_default_na=False)  # every column at full precision (the table shows 4 decimals)
    assert float(full.loc[0, "score"]) == pytest.approx(verdict["score"], abs=1e-5)
    assert rows.loc[0, "score"] == pytest.approx(verdict["score"], abs=1e-4)
    assert bool(rows.loc[0, "is_defect"]) == verdict["is_defect"]
    assert list(full.columns) == columns(["patchcore", "classifier_cnn", "classifier_vit"], labelled=False)
    assert list(full["path"]) == list(rows["picture"])
    assert len(gallery) == 3
    top = rows[rows["error"] == ""].sort_values("score", ascending=False)["picture"].tolist()[:3]
    assert [g["caption"].split(" · ")[0] for g in gallery] == top


def brighter(seed: int) -> np.ndarray:
    """A good weave under brighter light: a false alarm of the weave bundle (as in test_reviews)."""
    picture = texture(np.random.default_rng(seed)).astype(np.float32) * 1.3 + 20
    return np.clip(picture, 0, 255).astype(np.uint8)


def test_feedback_teaches_a_bundle_folder_offline(texture_bundle, trunk, tmp_path, capsys):
    """A CSV of reviews through the command, then the pictures inspected with the taught bundle: the brighter weave
    (a false alarm) reviewed good is answered good by the reloaded bundle and in the results, a missing picture is
    reported and skipped; the same file applied again changes nothing, and --sensitivity is saved (refused while
    OUTDIR holds results scored before it)."""
    import pandas as pd

    from xai.bundle import load
    from xai.inspector import Inspector

    folder = tmp_path / "weave"
    shutil.copytree(texture_bundle, folder)
    day = tmp_path / "day"
    (day / "line1").mkdir(parents=True)
    alarm = day / "line1" / "bright.png"
    Image.fromarray(brighter(1)).save(alarm)
    rng = np.random.default_rng(5)
    Image.fromarray(add_defect(texture(rng), rng, "scratch")[0]).save(day / "scratch.png")
    feedback = day / "feedback.csv"
    feedback.write_text("path,verdict\nline1/bright.png,good\n\nscratch.png,Defect\nmissing.png,good\n")
    assert Inspector(load(texture_bundle), trunk).detect(alarm).is_defect, "the fitted bundle flags it"
    out = tmp_path / "out"
    assert inspect_cli.main(["--bundle", str(folder), "--feedback", str(feedback), "--input", str(day),
                             "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert re.search(r"good +line1/bright.png +score \S+ -> \S+ \(threshold \S+\), [1-9]\d* rows added", said)
    assert re.search(r"defect +scratch.png +score \S+ \(threshold \S+\), kept as evidence", said)
    assert re.search(r"missing.png +skipped \(line 5\): No image file", said)
    assert "2 of 3 reviews applied" in said and "1 skipped" in said and f"saved into {folder}" in said
    taught = Inspector(load(folder), trunk)
    assert [(e.name, e.verdict) for e in taught.reviews.entries] == [("line1/bright.png", "good"),
                                                                     ("scratch.png", "defect")]
    assert not taught.detect(alarm).is_defect
    results = pd.read_parquet(out / "results.parquet").set_index("path")
    assert not results.loc[str(alarm), "is_defect"]
    page = (out / "report.html").read_text()
    assert "learned from 2 reviewed pictures (1 good, 1 defective)" in page and "Review queue" in page

    with_input = ["--bundle", str(folder), "--feedback", str(feedback), "--sensitivity", "0.05"]
    before = digest(folder)
    assert run(inspect_cli.main, [*with_input, "--input", str(day), "--out", str(out)]) == 2
    assert "already holds results scored before these reviews" in capsys.readouterr().err
    assert digest(folder) == before
    assert inspect_cli.main(with_input) == 0
    said = capsys.readouterr().out
    assert said.count("already reviewed") == 2 and "0 of 3 reviews applied" in said and "set by user" in said
    again = Inspector(load(folder), trunk)
    assert len(again.reviews.entries) == 2 and again.reviews.n_rows == taught.reviews.n_rows
    assert again.sensitivity()["set_by"] == "user" and again.sensitivity()["share"] == 0.05


def test_a_bad_feedback_file_or_a_hub_bundle_is_refused_and_nothing_is_applied(texture_bundle, tmp_path, capsys):
    from huggingface_hub import constants

    folder = tmp_path / "weave"
    shutil.copytree(texture_bundle, folder)
    Image.fromarray(brighter(1)).save(tmp_path / "bright.png")
    feedback = tmp_path / "feedback.csv"
    before = digest(folder)

    def refused(text: str, bundle: str = str(folder)) -> str:
        feedback.write_text(text)
        assert run(inspect_cli.main, ["--bundle", bundle, "--feedback", str(feedback)]) == 2
        assert digest(folder) == before
        return capsys.readouterr().err

    said = refused("path,verdict\nbright.png,good\nother.png,ok\n,good\n# a note\nbright.png,defect\n")
    assert "line 3: the verdict of other.png is 'ok', not good or defect" in said
    assert "line 4 has no path" in said and "line 6: bright.png is reviewed on line 2 already" in said
    assert "Nothing was applied" in said and "line 2:" not in said
    assert "line 1 should be the header path,verdict" in refused("picture,label\nbright.png,good\n")
    assert "lists no reviews" in refused("path,verdict\n")
    good = "path,verdict\nbright.png,good\n"
    said = refused(good, "org/weave")
    assert "must be a local bundle folder" in said and "hf download" in said
    snapshot = Path(constants.HF_HUB_CACHE) / "models--test--feedback" / "snapshots" / "0"
    snapshot.mkdir(parents=True)
    try:
        (snapshot / "bundle.json").symlink_to(folder / "bundle.json")
        assert "a snapshot in the Hugging Face cache" in refused(good, str(snapshot))
    finally:
        shutil.rmtree(snapshot.parents[1])
    with pytest.raises(SystemExit):
        inspect_cli.parse_args(["--bundle", str(folder)])  # --input is optional only when the bundle is taught
    with pytest.raises(SystemExit):
        inspect_cli.parse_args(["--bundle", str(folder), "--sensitivity", "0.9"])
    assert "from 0.001" in capsys.readouterr().err


def test_the_reports_review_queue_lists_the_pictures_nearest_the_threshold_first(tmp_path):
    from training.batch.report import write_report

    scores = {"far-good.png": 0.2, "near-above.png": 1.05, "nearest-below.png": 0.98, "far-defect.png": 3.0,
              "mid.png": 0.8}
    rows = [{"path": path, "width": 8, "height": 8, "label": "defect" if score > 1 else "good",
             "is_defect": score > 1, "score": score, "threshold": 1.0, "component": "patchcore",
             "score_patchcore": score, "ms": 1.0, "error": ""} for path, score in scores.items()]
    rows.append({"path": "broken.png", "error": "cannot read it (OSError)"})
    table = frame(rows, columns(["patchcore"], labelled=False))
    page = write_report(tmp_path, table, "bundles/weave", BundleMeta(category="weave"), top=0, queue=3).read_text()
    queue = page.split("<h2>Review queue")[1].split("</table>")[0]
    assert re.findall(r"<td>([\w-]+\.png)</td>", queue) == ["nearest-below.png", "near-above.png", "mid.png"]
    assert "<td>-2.0%</td><td>good</td>" in queue and "<td>+5.0%</td><td>defect</td>" in queue
    assert "--feedback FILE.csv" in queue
    default = write_report(tmp_path, table, "bundles/weave", BundleMeta(category="weave"), top=0).read_text()
    assert "the 5 nearest the threshold" in default  # every readable picture, up to 20
    assert "Review queue" not in write_report(tmp_path, table, "b", BundleMeta(), top=0, queue=0).read_text()
