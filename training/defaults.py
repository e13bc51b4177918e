"""Build the project's default bundles with its own training code: what scripts/run.sh and a bare `python app.py`
(a Space whose Hub bundles cannot be fetched) both run.

    python -m training.defaults solar-cells --out bundles/solar-cells [--epochs 3] [--input-size 224]
    python -m training.defaults mvtec --data ../shared/data/mvtec_ad/bottle --out bundles/bottle [--epochs 3]

A bundle counts as built once its eval.json exists (written last), so an interrupted build starts over.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from training import evaluate, evaluate_explanations, fit_patchcore, train_classifier
from training.cli import run

DONE = "eval.json"
FAST_METHODS = "anomaly_map,retrieval,gradcam,gradcam_pp,saliency,attention_rollout"

Step = Callable[[int, int, str], None]  # (step, of steps, what) for a progress display


def is_built(out: Path) -> bool:
    return (Path(out) / DONE).is_file()


def _steps(out: Path, steps: list[tuple[str, Callable[[], int]]], on_step: Step | None) -> Path:
    if out.exists() and not is_built(out):
        shutil.rmtree(out)  # a half-built bundle from an interrupted run
    for i, (what, step) in enumerate(steps):
        if on_step is not None:
            on_step(i, len(steps), what)
        if step() != 0:
            raise RuntimeError(f"building {out} failed at: {what}")
    return out


def build_solar_cells(out: str | Path, epochs: int = 3, input_size: int = 224, on_step: Step | None = None) -> Path:
    """The solar-cell category from the elpv-dataset package: PatchCore, the CNN head, its evaluation."""
    out = Path(out)
    common = ["--layout", "elpv", "--out", str(out), "--category", "solar-cells"]
    return _steps(out, [
        ("fitting the anomaly detector", lambda: fit_patchcore.main(common + ["--input-size", str(input_size)])),
        ("training the classifier", lambda: train_classifier.main(common + ["--arch", "cnn", "--epochs", str(epochs)])),
        ("evaluating", lambda: evaluate.main(["--layout", "elpv", "--bundle", str(out), "--json", str(out / DONE)])),
    ], on_step)


def build_mvtec(data: str | Path, out: str | Path, epochs: int = 3, explain_limit: int = 12,
                on_step: Step | None = None) -> Path:
    """A category from an mvtec-layout folder: PatchCore, both heads, the fast methods' explanation table (on a
    seeded sample of the test defects, for the report card) and the evaluation."""
    out, data = Path(out), str(data)
    return _steps(out, [
        ("fitting the anomaly detector", lambda: fit_patchcore.main(["--data", data, "--out", str(out)])),
        ("training the classifiers", lambda: train_classifier.main(
            ["--data", data, "--out", str(out), "--arch", "both", "--epochs", str(epochs)])),
        ("scoring the explanations", lambda: evaluate_explanations.main(
            ["--data", data, "--bundle", str(out), "--json", str(out / "explanations.json"),
             "--limit", str(explain_limit), "--methods", FAST_METHODS])),
        ("evaluating", lambda: evaluate.main(["--data", data, "--bundle", str(out), "--json", str(out / DONE)])),
    ], on_step)


class BackgroundBuild:
    """Builds the solar-cell category in a daemon thread and hands it to `on_ready(folder)` when done; `status`
    says what it is doing, for the page. What a Space does when its published bundles cannot be fetched: the
    app is up at once and the category appears when it is ready, named as built here."""

    def __init__(self, out: str | Path, on_ready: Callable[[Path], None], epochs: int = 3, input_size: int = 224):
        import threading

        self.out, self.on_ready, self.epochs, self.input_size = Path(out), on_ready, epochs, input_size
        self.status = "waiting to start"
        self.done = False
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._run, name="default-bundle-build", daemon=True)

    def start(self) -> BackgroundBuild:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _step(self, i: int, n: int, what: str) -> None:
        self.status = f"step {i + 1} of {n}: {what}"

    def _run(self) -> None:
        import logging

        try:
            if not is_built(self.out):
                build_solar_cells(self.out, self.epochs, self.input_size, self._step)
            self.status = "loading"
            self.on_ready(self.out)
            self.status = "ready"
        except BaseException as exc:  # reported on the page; the app keeps serving
            logging.getLogger("defect_xai").exception("building the default solar-cell category failed")
            self.failed = f"{type(exc).__name__}: {exc}"
            self.status = "failed (see the server log)"
        finally:
            self.done = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.defaults", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("solar-cells", "mvtec"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", help="mvtec-layout folder (kind mvtec)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=224, help="solar cells' model input side")
    args = parser.parse_args(argv)

    def say(i: int, n: int, what: str) -> None:
        print(f"[{i + 1}/{n}] {what} -> {args.out}", file=sys.stderr)

    if is_built(Path(args.out)):
        print(f"{args.out} is already built", file=sys.stderr)
    elif args.kind == "solar-cells":
        build_solar_cells(args.out, args.epochs, args.input_size, say)
    else:
        if not args.data:
            parser.error("--data is required for kind mvtec")
        build_mvtec(args.data, args.out, args.epochs, on_step=say)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
