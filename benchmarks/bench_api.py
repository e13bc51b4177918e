"""gradio_client round trips against the app on localhost: /detect latency, and /detect under load while a
SHAP explanation runs.

    python -m benchmarks.bench_api --bundles BUNDLE[,BUNDLE] --image PART.png [--repeats 20] [--clients 8 --calls 25]

Starts the app in this process on a free port (as `python app.py` would serve it), then measures what a script
sees: median wall time of `client.predict(handle_file(image), category, api_name="/detect")`, next to a no-op
endpoint-free floor (`/info`), and the sizes of what travels.
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
    parser.add_argument("--bundles", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--calls", type=int, default=25)
    args = parser.parse_args(argv)
    from gradio_client import Client, handle_file

    from space.admission import Limits
    from space.catalogue import Catalogue
    from space.server import serving
    from space.settings import Settings

    catalogue = Catalogue.from_sources(args.bundles)
    category = catalogue.categories[0]
    # every simulated client comes from 127.0.0.1: per-caller limits raised to let them all through
    limits = Limits.loopback()
    with serving(Settings(limits=limits), catalogue) as (url, _):
        url += "/"
        client = Client(url, verbose=False)

        def timed(fn) -> list[float]:
            fn()
            out = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                out.append((time.perf_counter() - start) * 1000)
            return out

        info_ms = timed(lambda: client.predict(api_name="/info"))
        detect_ms = timed(lambda: client.predict(handle_file(args.image), category, api_name="/detect"))
        overlay, verdict = client.predict(handle_file(args.image), category, api_name="/detect")
        sent, back = Path(args.image).stat().st_size, Path(overlay).stat().st_size
        print(f"upload {sent / 1e3:.0f} kB, overlay back {back / 1e3:.0f} kB")
        print(f"/info   median {statistics.median(info_ms):6.0f} ms (transport floor, no image)")
        model_ms = verdict["timings_ms"]["total"]
        print(f"/detect median {statistics.median(detect_ms):6.0f} ms (model part {model_ms:.0f} ms)")

        errors: list[str] = []
        latencies: list[float] = []

        done = threading.Event()
        shap_runs: list[float] = []

        def shap_calls():  # SHAP explanations back to back for as long as the /detect clients run
            c = Client(url, verbose=False)
            while not done.is_set():
                start = time.perf_counter()
                try:
                    c.predict(handle_file(args.image), category, "shap", api_name="/explain")
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    errors.append(f"shap: {exc}")
                shap_runs.append(time.perf_counter() - start)

        def worker():
            c = Client(url, verbose=False)
            for _ in range(args.calls):
                start = time.perf_counter()
                try:
                    c.predict(handle_file(args.image), category, api_name="/detect")
                except Exception as exc:  # noqa: BLE001
                    errors.append(str(exc))
                latencies.append((time.perf_counter() - start) * 1000)

        shap_thread = threading.Thread(target=shap_calls)
        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        start = time.perf_counter()
        shap_thread.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        done.set()
        shap_thread.join()
        print(f"{args.clients} clients x {args.calls} /detect with SHAP explanations running throughout "
              f"({len(shap_runs)} SHAP calls, median {statistics.median(shap_runs):.1f} s): {len(latencies)} calls in "
              f"{wall:.1f} s, {len(errors)} errors, median {statistics.median(latencies):.0f} ms, "
              f"p95 {sorted(latencies)[int(0.95 * len(latencies)) - 1]:.0f} ms")
        for err in errors[:5]:
            print("  error:", err)
        return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
