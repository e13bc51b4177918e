"""Soak run: hundreds of distinct uploads through /detect, and the disk the app holds for them over time.

    python -m benchmarks.soak_uploads --bundles BUNDLE [--uploads 300] [--sweep 5,15]

Starts the app on a free port with Gradio's temp folder in a fresh directory and a short cache sweep (every
`sweep[0]` s, files older than `sweep[1]` s; the app's default is every 300 s, older than 1,800 s), sends
distinct generated pictures (about 0.8 MB each, so nothing is de-duplicated by content), and prints the bytes
under the temp folder and the output folder every 25 uploads, then after the sweeps have run: disk use must
level off instead of growing with every upload.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except FileNotFoundError:  # swept while we counted
            continue
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", required=True)
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--sweep", default="5,15", help="every,older-than seconds")
    args = parser.parse_args(argv)
    every, age = (int(v) for v in args.sweep.split(","))
    temp = Path(tempfile.mkdtemp(prefix="defect-xai-soak-"))
    os.environ["GRADIO_TEMP_DIR"] = str(temp / "gradio")  # before Gradio is imported
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    from space.admission import Limits
    from space.catalogue import Catalogue
    from space.server import serving
    from space.settings import Settings

    catalogue = Catalogue.from_sources(args.bundles)
    category = catalogue.categories[0]
    settings = Settings(limits=Limits.loopback(), cache_sweep=(every, age))
    rng = np.random.default_rng(0)
    pictures = temp / "pictures"
    pictures.mkdir()
    with serving(settings, catalogue) as (url, space):
        client = Client(f"{url}/", verbose=False)
        outputs = space.outputs.root
        start = time.perf_counter()
        print(f"{'uploads':>8}{'s':>8}{'gradio temp MB':>16}{'outputs MB':>12}")
        peak = 0
        for i in range(1, args.uploads + 1):
            path = pictures / f"{i:04d}.png"
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(path)
            client.predict(handle_file(str(path)), category, api_name="/detect")
            path.unlink()
            if i % 25 == 0:
                held = folder_bytes(temp / "gradio")
                peak = max(peak, held)
                print(f"{i:8d}{time.perf_counter() - start:8.0f}{held / 2**20:16.1f}"
                      f"{folder_bytes(outputs) / 2**20:12.1f}", flush=True)
        sent = args.uploads * (512 * 512 * 3 + 1000) / 2**20
        time.sleep(age + 2 * every)
        final = folder_bytes(temp / "gradio")
        print(f"after {age + 2 * every} s idle: gradio temp {final / 2**20:.1f} MB "
              f"(peak {peak / 2**20:.1f} MB; {sent:.0f} MB were uploaded in all)")
        ok = peak < 0.5 * sent * 2**20 and final <= peak
        print("disk use levels off" if ok else "disk use GROWS with uploads")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
