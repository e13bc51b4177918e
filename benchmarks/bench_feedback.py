"""What reviews do (issue #31's figures): false alarms on good test pictures reviewed good, and the round trip.

    python -m benchmarks.bench_feedback --bundles DIR --data SET[,SET...] [--ks 1,2,5]
    python -m benchmarks.bench_feedback --api --bundles BUNDLE --pictures DIR [--repeats 5] [--teach 50]

The first form takes, for each dataset folder (mvtec layout, or `elpv`), the bundle fitted on it in
DIR/<folder name> (`benchmark_detector --out DIR` writes them) and marks the k highest-scoring good *test* pictures
good: the false alarms among the remaining good test pictures before and after, the image AUROC on the rest, and
how many defective pictures fell from above the threshold to below it. Each k starts from the fitted bundle (the
reviews are undone, which restores every score exactly). The second form starts the app in this process and times
/feedback through gradio_client with 224 x 224 pictures (median of --repeats), the bank's growth per picture, and
/detect before and after --teach reviews.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def dataset_rows(bundles: Path, data: str, ks: list[int]) -> list[dict]:
    from training.data import load_dataset
    from xai.backbone import create_trunk
    from xai.bundle import load
    from xai.inspector import Inspector
    from xai.metrics import auroc

    name = "elpv" if data == "elpv" else Path(data).name
    dataset = load_dataset("elpv" if data == "elpv" else "mvtec", None if data == "elpv" else data)
    inspector = Inspector(load(bundles / name), create_trunk())
    tests = dataset.test
    truth = np.array([s.is_defect for s in tests])

    def scores() -> np.ndarray:
        found = inspector.detect_batch([s.path for s in tests])
        return np.array([d.scores["patchcore"] for d in found])

    before = scores()
    good = np.flatnonzero(~truth)
    rows = []
    for k in ks:
        marked = good[np.argsort(-before[good])[:k]]
        rest = np.setdiff1d(np.arange(len(tests)), marked)
        threshold_before = inspector.thresholds["patchcore"]
        start = time.perf_counter()
        reviews = [inspector.review(tests[i].path, "good") for i in marked]
        seconds = (time.perf_counter() - start) / k
        after = scores()
        threshold = inspector.thresholds["patchcore"]
        rest_good, rest_bad = rest[~truth[rest]], rest[truth[rest]]
        rows.append({
            "dataset": name, "k": k, "good_rest": len(rest_good),
            "false_alarms_before": int((before[rest_good] > threshold_before).sum()),
            "false_alarms_after": int((after[rest_good] > threshold).sum()),
            "marked_flagged_before": int((before[marked] > threshold_before).sum()),
            "marked_flagged_after": int((after[marked] > threshold).sum()),
            "auroc_rest_before": round(auroc(truth[rest], before[rest]), 4),
            "auroc_rest_after": round(auroc(truth[rest], after[rest]), 4),
            "defects_lost": int(((before[rest_bad] > threshold_before) & (after[rest_bad] <= threshold)).sum()),
            "defects": len(rest_bad), "rows_per_picture": round(float(np.mean([r.rows for r in reviews])), 1),
            "bank": len(inspector.patchcore.memory_bank), "s_per_review": round(seconds, 3),
        })
        for review in reviews:
            inspector.undo_review(review.id)
        assert np.array_equal(scores(), before), "undo did not restore the scores"
    return rows


def api_figures(bundle: str, pictures: Path, repeats: int, teach: int) -> None:
    from gradio_client import Client, handle_file
    from PIL import Image

    from space.admission import Limits
    from space.catalogue import Catalogue
    from space.server import serving
    from space.settings import Settings
    from training.data import list_images

    folder = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    files = []
    for i, path in enumerate(list_images(pictures)[:max(repeats, teach) + 1]):
        with Image.open(path) as picture:
            target = folder / f"{i:03d}.png"
            picture.convert("RGB").resize((224, 224)).save(target)
            files.append(target)
    catalogue = Catalogue.from_sources(bundle)
    category = catalogue.categories[0]
    with serving(Settings(limits=Limits.loopback()), catalogue) as (url, _):
        client = Client(url + "/", verbose=False)

        def detect_ms(cat: str, n: int = 20) -> float:
            client.predict(handle_file(str(files[-1])), cat, api_name="/detect")
            times = []
            for _ in range(n):
                start = time.perf_counter()
                client.predict(handle_file(str(files[-1])), cat, api_name="/detect")
                times.append((time.perf_counter() - start) * 1000)
            return statistics.median(times)

        first = client.predict(handle_file(str(files[0])), category, "good", api_name="/feedback")
        cid = first["category"]  # the served category's private copy, made by the first review
        idle = detect_ms(cid)
        times, rows = [], [first["rows_added"]]
        for path in files[1:repeats + 1]:
            start = time.perf_counter()
            answer = client.predict(handle_file(str(path)), cid, "good", api_name="/feedback")
            times.append(time.perf_counter() - start)
            rows.append(answer["rows_added"])
        for path in files[repeats + 1:teach]:
            answer = client.predict(handle_file(str(path)), cid, "good", api_name="/feedback")
            rows.append(answer["rows_added"])
        taught = detect_ms(cid)
        print(f"/feedback round trip, 224 x 224 pictures, {category}: median {statistics.median(times):.2f} s "
              f"({repeats} calls; the first review, which copies the category, not counted)")
        print(f"bank growth: median {statistics.median(rows):.0f} patches per picture reviewed good "
              f"(bank {first['bank_size'] - first['rows_added']:,} fitted, {answer['bank_size']:,} after "
              f"{len(rows)} reviews)")
        print(f"/detect on the copy: median {idle:.0f} ms after 1 review, {taught:.0f} ms after {len(rows)} (20 calls)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", required=True)
    parser.add_argument("--data", help="comma-separated dataset folders ('elpv': the package)")
    parser.add_argument("--ks", default="1,2,5")
    parser.add_argument("--api", action="store_true")
    parser.add_argument("--pictures", help="(--api) folder of good pictures to review")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--teach", type=int, default=50)
    args = parser.parse_args(argv)
    if args.api:
        api_figures(args.bundles, Path(args.pictures), args.repeats, args.teach)
        return 0
    rows = [row for data in args.data.split(",") for row in
            dataset_rows(Path(args.bundles), data, [int(k) for k in args.ks.split(",")])]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
