"""Shared command-line plumbing: one clear line on stderr and a non-zero exit for every expected failure."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from training.data import DataError, Sample
from xai.errors import UserError
from xai.io import ImageInputError, load_image

EXPECTED_ERRORS = (UserError, FileNotFoundError)  # every message meant for a person, and a missing path


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Call `main(argv)`; expected failures print `error: <one line>` and return exit code 2."""
    try:
        return int(main(argv) or 0)
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


@contextmanager
def run_errors(kind: type[Exception]) -> Iterator[None]:
    """The training code called as a library (the app): its expected failures come out as `kind`, with their one
    line and server paths cut to file names."""
    from xai.errors import redact

    try:
        yield
    except EXPECTED_ERRORS as exc:
        raise kind(redact(str(exc))) from None


def load_sample_image(sample: Sample):
    """The sample's RGB image; an unreadable file raises DataError naming it."""
    try:
        return load_image(sample.path)
    except ImageInputError as exc:
        raise DataError(f"{sample.path}: {exc}") from None


def relative_name(path: Path, root: str) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def training_parser(prog: str, doc: str | None):
    """argparse parser with the options every training command shares (--data, --out, --layout, --category,
    --test-fraction, --seed, --input-size)."""
    import argparse

    from training.data import LAYOUTS

    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n")[0])
    parser.add_argument("--data", help="dataset folder (optional for --layout elpv)")
    parser.add_argument("--out", required=True, help="bundle folder to write (created; other components kept)")
    parser.add_argument("--layout", choices=LAYOUTS, default="mvtec")
    parser.add_argument("--category", help="category name shown in the app (default: the dataset's name)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=int, help="model input side in px (default: the bundle's, if it has "
                        "components, else the layout's: 320 for elpv, 224 otherwise)")
    return parser
