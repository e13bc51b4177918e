"""Batch inspection: a folder, glob, zip or list of pictures through a bundle into one table, a report and,
optionally, every raw anomaly map and overlay; and an engineer's reviews applied to a bundle offline.

    python -m training.inspect --bundle BUNDLE --input DIR|ZIP|GLOB|LIST --out OUTDIR
                               [--engine local|ray] [--ray-address ADDR] [--batch-size N] [--maps] [--overlays]
                               [--top N] [--queue N]
    python -m training.inspect --bundle FOLDER --feedback FILE.csv [--sensitivity SHARE|fit]
                               [--input ... --out OUTDIR ...]

Writes OUTDIR/results.parquet and results.csv (one row per picture: path, width, height, label, is_defect,
score, threshold, component, score_<component>, ms, error; truth and truth_is_defect when the folder's layout
names classes), OUTDIR/report.html (with a review queue: the pictures nearest the threshold first), and with
--maps / --overlays OUTDIR/maps/*.png (16-bit: map / threshold x 1,000) and OUTDIR/overlays/*.jpg. A picture that
cannot be read is a row with its message. Running it again on the same OUTDIR resumes: pictures already in the
results are not inspected again. Rows are written batch by batch, so memory does not grow with the number of
pictures. The local engine runs one single-threaded pipeline (read, decode, resize, model) a core; `--engine ray`
runs the same rows on Ray Data (requirements-ray.txt).

--feedback FILE.csv (a header `path,verdict`, then one reviewed picture a line: its path, relative to the CSV's
folder or absolute, a zip member as ARCHIVE.zip::member, and `good` or `defect`) teaches the bundle's detector
without a refit (xai.reviews): a picture reviewed good joins its memory bank, one reviewed defect is kept as
evidence. Every line is checked first (a bad one is named by its line number and nothing is applied); a picture
that cannot be read is reported and skipped. The reviews are saved into the bundle folder once all are applied
(an interrupted run saves nothing), so --bundle must be a local folder: download or copy a Hub bundle first. Each
review's name in bundle.json is the path as the CSV writes it; a line whose path the bundle's reviews already
name with that verdict is skipped, one with the other verdict replaces that review, so the same file can be
applied again as it grows. --sensitivity SHARE sets the share of good parts flagged (0.001 to 0.5; `fit`: back
to the fit's threshold) and saves it, after the reviews. With --input as well, the reviews are applied and saved
first and the pictures are then inspected with the taught bundle; an OUTDIR that already holds results is then
refused (they were scored before the reviews), unless the reviews change nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.batch.feedback import sensitivity_arg, teach
from training.batch.inspection import inspect_into
from training.batch.pipeline import DEFAULT_BATCH
from training.cli import run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="bundle folder or Hub repo id (a folder for --feedback)")
    parser.add_argument("--input", help="a folder, a zip, a glob (quoted) or a list file of paths")
    parser.add_argument("--out", type=Path, help="results folder (resumed when it has results); with --input")
    parser.add_argument("--engine", choices=("local", "ray"), default="local")
    parser.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local one)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--maps", action="store_true", help="write each raw anomaly map (16-bit PNG)")
    parser.add_argument("--overlays", action="store_true", help="write each anomaly-map overlay (JPEG)")
    parser.add_argument("--top", type=int, default=12, help="most anomalous pictures shown in the report")
    parser.add_argument("--queue", type=int, default=None, metavar="N",
                        help="pictures nearest the threshold listed first in the report's review queue (default 20; "
                        "0: none)")
    parser.add_argument("--feedback", type=Path, metavar="FILE.csv",
                        help="a CSV of reviewed pictures (path,verdict: good or defect) to teach the bundle folder "
                        "with before anything else")
    parser.add_argument("--sensitivity", type=sensitivity_arg, metavar="SHARE|fit",
                        help="share of good parts flagged from now on (0.001-0.5; fit: the fit's threshold), "
                        "saved into the bundle folder")
    args = parser.parse_args(argv)
    teaching = args.feedback is not None or args.sensitivity is not None
    if args.input is None and not teaching:
        parser.error("--input is required (unless --feedback or --sensitivity teaches the bundle)")
    if args.input is not None and args.out is None:
        parser.error("--out is required with --input")
    if args.input is None and args.out is not None:
        parser.error("--out goes with --input (the pictures to inspect)")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.queue is not None and args.queue < 0:
        parser.error("--queue must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inspector = None
    if args.feedback is not None or args.sensitivity is not None:
        inspector = teach(args.bundle, args.feedback, args.sensitivity, args.out if args.input else None)
    if args.input is None:
        return 0
    table = inspect_into(args.bundle, args.input, args.out, args.engine, args.batch_size, args.maps, args.overlays,
                         args.ray_address, args.top, args.queue, inspector)
    errors = int((table["error"].fillna("") != "").sum())
    defects = int(table["is_defect"].fillna(False).sum())
    print(f"{len(table)} pictures: {defects} defective, {errors} unreadable -> {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
