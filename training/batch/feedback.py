"""An engineer's reviews from a CSV file (path, verdict) applied to a bundle folder offline, and its sensitivity:
`python -m training.inspect --feedback FILE.csv [--sensitivity SHARE|fit]` (see that module's docstring)."""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from training.batch.results import PARTS, RESULTS
from training.batch.sources import ZIP_SEP, read_picture
from training.jobs import progress
from xai.bundle import BUNDLE_JSON, load
from xai.bundle_meta import BundleMeta
from xai.errors import UserError

FIT = "fit"  # --sensitivity fit: back to the fit's threshold


def sensitivity_arg(text: str):
    """--sensitivity's value: a share (xai.reviews.read_sensitivity), or FIT for the fit's threshold."""
    from xai.reviews import ReviewError, read_sensitivity

    try:
        share = read_sensitivity(text)
    except ReviewError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return FIT if share is None else share


class FeedbackError(UserError, ValueError):
    """A feedback file or a bundle that reviews cannot be applied to; the message names the line or says what to
    do."""


@dataclass(frozen=True)
class Feedback:
    """One reviewed picture of a feedback file."""

    line: int
    name: str  # the path as the file writes it: the review's name in bundle.json
    path: str  # where it is read from (relative paths taken from the file's folder)
    verdict: str


MAX_LISTED = 5  # bad lines one error message names


def read_feedback(file: Path) -> list[Feedback]:
    """The reviews `file` lists (a CSV: the header path,verdict, then one picture a line; blank lines and lines
    starting with # are skipped, other columns ignored). Every line is checked before any is used: FeedbackError
    names each bad one by its line number."""
    from xai.reviews import VERDICTS

    file = Path(file)
    try:
        text = file.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
    except (OSError, UnicodeDecodeError) as exc:
        raise FeedbackError(f"The feedback file {file} cannot be read as a UTF-8 CSV ({exc}).") from None
    header: list[str] | None = None
    rows: list[Feedback] = []
    bad: list[str] = []
    seen: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text))
    try:
        for fields in reader:
            line, cells = reader.line_num, [c.strip() for c in fields]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if header is None:
                header = [c.lower() for c in cells]
                if "path" not in header or "verdict" not in header:
                    raise FeedbackError(f"{file}: line {line} should be the header path,verdict, not "
                                        f"{','.join(cells)!r}. Nothing was applied.")
                continue
            name, verdict = (cells[i] if i < len(cells) else "" for i in map(header.index, ("path", "verdict")))
            if not name:
                bad.append(f"line {line} has no path")
            elif verdict.lower() not in VERDICTS:
                bad.append(f"line {line}: the verdict of {name} is {verdict!r}, not {' or '.join(VERDICTS)}")
            elif (path := _beside(file.parent, name)) in seen:
                bad.append(f"line {line}: {name} is reviewed on line {seen[path]} already")
            else:
                seen[path] = line
                rows.append(Feedback(line, name, path, verdict.lower()))
    except csv.Error as exc:
        raise FeedbackError(f"{file}: line {reader.line_num} is not CSV ({exc}). Nothing was applied.") from None
    if bad:
        more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise FeedbackError(f"{file}: {'; '.join(bad[:MAX_LISTED])}{more}. Nothing was applied.")
    if not rows:
        raise FeedbackError(f"{file} lists no reviews: a header path,verdict, then one picture a line (its path, "
                            "relative to the file's folder or absolute, and good or defect).")
    return rows


def _beside(folder: Path, name: str) -> str:
    """A feedback path as read_picture takes it: relative ones from `folder`, a zip member's archive too."""
    archive, sep, member = name.partition(ZIP_SEP)
    return str(Path(archive) if Path(archive).is_absolute() else folder / archive) + sep + member


HOW_TO_COPY = ("download it first (hf download ORG/NAME --local-dir DIR) or copy the bundle folder, and pass that "
               "folder as --bundle")


def local_bundle(source: str) -> Path:
    """The bundle folder --feedback and --sensitivity save into: FeedbackError for a Hub repo id, a snapshot in the
    Hugging Face cache (whose files the cache shares between revisions), a file, or a folder that is no bundle."""
    folder = Path(source)
    if not folder.is_dir():
        raise FeedbackError(f"--feedback and --sensitivity save into the bundle, so --bundle must be a local bundle "
                            f"folder, and {source} is none (a Hub repo id, a file or a missing path): {HOW_TO_COPY}.")
    if (folder / BUNDLE_JSON).is_symlink() or _in_hub_cache(folder):
        raise FeedbackError(f"{source} is a snapshot in the Hugging Face cache, which reviews must not change: "
                            f"{HOW_TO_COPY}.")
    if not (folder / BUNDLE_JSON).is_file():
        raise FeedbackError(f"{source} is not a defect-xai bundle: it has no {BUNDLE_JSON}.")
    if not os.access(folder, os.W_OK):
        raise FeedbackError(f"{source} cannot be written to; copy the bundle folder somewhere writable and pass that "
                            "folder as --bundle.")
    return folder


def _in_hub_cache(folder: Path) -> bool:
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE).resolve()
    return cache in folder.resolve().parents


def _has_results(out: Path) -> bool:
    return (out / RESULTS).is_file() or any((out / PARTS).glob("*.parquet"))


def _changes(meta: BundleMeta, rows: list[Feedback], sensitivity) -> bool:
    """Whether these reviews and sensitivity would change the bundle (read from its bundle.json alone)."""
    stored = meta.patchcore.reviews
    stored = stored if isinstance(stored, dict) else {}
    entries = stored.get("entries") if isinstance(stored.get("entries"), list) else []
    verdicts = {e.get("name"): e.get("verdict") for e in entries if isinstance(e, dict)}
    if any(verdicts.get(row.name) != row.verdict for row in rows):
        return True
    return sensitivity is not None and (None if sensitivity == FIT else sensitivity) != stored.get("sensitivity")


def _say(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stdout)  # above the progress bar, not through it


def apply_feedback(inspector, rows: list[Feedback]) -> dict[str, int]:
    """Each review applied to `inspector` (not saved), one line printed for each: a picture that cannot be read,
    or a review the detector cannot take (its bank full), is reported and skipped; one the bundle's reviews already
    name with that verdict is skipped, one they name with the other verdict replaces that review. Returns the
    counts (good, defect, rows, replaced, already, skipped)."""
    from xai.io import ImageInputError
    from xai.reviews import ReviewError

    counts = dict.fromkeys(("good", "defect", "rows", "replaced", "already", "skipped"), 0)
    width = min(60, max(len(row.name) for row in rows))
    for row in progress(rows, "review"):
        earlier = next((e for e in reversed(inspector.reviews.entries) if e.name == row.name), None)
        if earlier is not None and earlier.verdict == row.verdict:
            counts["already"] += 1
            _say(f"{row.verdict:<7} {row.name:<{width}}  already reviewed {row.verdict} ({earlier.at}): skipped")
            continue
        undone = False
        try:
            picture = read_picture(row.path)
            if earlier is not None:
                inspector.undo_review(earlier.id)
                undone = True
                counts["replaced"] += 1
            review = inspector.review(picture, row.verdict, name=row.name)
        except (ImageInputError, ReviewError) as exc:
            counts["skipped"] += 1
            _say(f"{row.verdict:<7} {row.name:<{width}}  skipped (line {row.line}): {exc}"
                 + (f" (its {earlier.verdict} review is undone)" if undone else ""))
            continue
        counts[row.verdict] += 1
        counts["rows"] += review.rows
        change = (f"score {review.score_before:.4g} -> {review.score_after:.4g}" if row.verdict == "good"
                  else f"score {review.score_before:.4g}")
        what = f"{review.rows} rows added" if row.verdict == "good" else "kept as evidence"
        _say(f"{row.verdict:<7} {row.name:<{width}}  {change} (threshold {review.threshold:.4g}), {what}"
             + (f", replacing its {earlier.verdict} review" if earlier is not None else ""))
    return counts


def teach(source: str, feedback: Path | None, sensitivity, out: Path | None = None):
    """Apply the reviews of the CSV `feedback` and the `sensitivity` (a share, "fit" or None: unchanged) to the
    bundle folder `source` and save them there; print a line per review and a summary. Refused before anything
    is applied: a bad line, a bundle that is no local folder or has no detector, and, when the pictures are to be
    inspected into `out` next, an `out` that holds results and reviews that change the bundle. Returns the taught
    inspector."""
    from xai.inspector import Inspector

    folder = local_bundle(source)
    rows = read_feedback(feedback) if feedback is not None else []
    meta = load(folder).metadata
    if meta.patchcore is None:
        raise FeedbackError(f"{source} has no anomaly detector; reviews and the sensitivity teach the detector's "
                            "bank and threshold (training.fit_patchcore adds one).")
    if out is not None and _has_results(out) and _changes(meta, rows, sensitivity):
        raise FeedbackError(f"{out} already holds results scored before these reviews; pass another --out, or "
                            "remove its results to inspect the pictures again with the taught bundle.")
    inspector = Inspector.from_source(str(folder))
    before = inspector.sensitivity()
    counts = apply_feedback(inspector, rows) if rows else {}
    stored = inspector.reviews.sensitivity
    if sensitivity is not None:
        inspector.set_sensitivity(None if sensitivity == FIT else sensitivity)
    changed = sum(counts.get(k, 0) for k in ("good", "defect", "replaced")) > 0 or \
        inspector.reviews.sensitivity != stored
    if changed:
        inspector.save_reviews()
    after = inspector.sensitivity()
    if rows:
        print(f"{counts['good'] + counts['defect']} of {len(rows)} reviews applied ({counts['good']} good: "
              f"{counts['rows']:,} rows added to the bank; {counts['defect']} defect"
              + (f"; {counts['replaced']} replacing a review of the other verdict" if counts["replaced"] else "")
              + f"), {counts['already']} already in the bundle, {counts['skipped']} skipped.")
    moved = f" (was {before['threshold']:.4g})" if before["threshold"] != after["threshold"] else ""
    print(f"Sensitivity (set by {after['set_by']}): {after['in_words']}, threshold {after['threshold']:.4g}{moved}; "
          f"{len(inspector.reviews.entries)} reviews in the bundle"
          + (f" -> saved into {folder}" if changed else ", nothing to save") + ".")
    return inspector
