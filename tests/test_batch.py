"""Batch inspection: Inspector.detect_batch against one picture at a time, the `training.inspect` command (rows,
unreadable files, maps, report, resume) and its Ray Data engine, on generated pictures."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from training import inspect as inspect_cli
from training.batch import MAP_SCALE, ResultsFolder, columns, list_inputs


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

from training.batch import list_inputs
from training.inspect import inspect_local
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
