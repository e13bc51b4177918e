"""/fit as a script sees it: gradio_client round trips with N good pictures, /detect on the new category right
after, and /detect on another category while a fit runs against its idle figure.

    python -m benchmarks.bench_fit --bundles BUNDLE --pictures DIR --image PART.png [--sizes 16,200] [--repeats 3]

Starts the app in this process on a free port (as `python app.py` serves it). Each size is fitted `--repeats`
times (medians reported; the category cap is raised so nothing is evicted). While the largest size fits again,
a second client calls /detect on the bundle's category back to back; its median is compared with the idle one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", required=True, help="the server's categories (its first is the one detected)")
    parser.add_argument("--pictures", required=True, help="folder of good pictures (the first N are sent)")
    parser.add_argument("--image", required=True, help="a picture to detect")
    parser.add_argument("--sizes", default="16,200")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from gradio_client import Client, handle_file

    from space.admission import Limits
    from space.catalogue import Catalogue
    from space.categories import CategoryLimits
    from space.server import serving
    from space.settings import Settings
    from training.data import list_images

    sizes = [int(s) for s in args.sizes.split(",")]
    pictures = list_images(Path(args.pictures))
    catalogue = Catalogue.from_sources(args.bundles, CategoryLimits(capacity=64, per_caller=64))
    category = catalogue.categories[0]
    limits = Limits.loopback()
    with serving(Settings(limits=limits), catalogue) as (url, _):
        url += "/"
        client, detector = Client(url, verbose=False), Client(url, verbose=False)

        def detect(cat: str) -> float:
            start = time.perf_counter()
            detector.predict(handle_file(args.image), cat, api_name="/detect")
            return (time.perf_counter() - start) * 1000

        def fit(n: int) -> tuple[float, dict]:
            start = time.perf_counter()
            made = client.predict([handle_file(str(p)) for p in pictures[:n]], f"bench {n}", api_name="/fit")
            return time.perf_counter() - start, made

        detect(category)
        idle = [detect(category) for _ in range(20)]
        print(f"/detect on {category}, idle: median {statistics.median(idle):.0f} ms (20 calls)")
        for n in sizes:
            runs = [fit(n) for _ in range(args.repeats)]
            walls = [w for w, _ in runs]
            made = runs[-1][1]
            after = detect(made["category"])
            print(f"/fit {n} pictures: round trip median {statistics.median(walls):.1f} s "
                  f"({', '.join(f'{w:.1f}' for w in walls)}), server {made['seconds']:.1f} s, threshold "
                  f"{made['threshold']:.3f}; /detect on it right after: {after:.0f} ms")
        busy: list[float] = []
        done = threading.Event()

        def during():
            while not done.is_set():
                busy.append(detect(category))

        thread = threading.Thread(target=during)
        thread.start()
        wall, _ = fit(sizes[-1])
        done.set()
        thread.join()
        ratio = statistics.median(busy) / statistics.median(idle)
        print(f"/detect on {category} during a {sizes[-1]}-picture fit ({wall:.1f} s): median "
              f"{statistics.median(busy):.0f} ms over {len(busy)} calls = {ratio:.2f}x idle")
        return 0


if __name__ == "__main__":
    sys.exit(main())
