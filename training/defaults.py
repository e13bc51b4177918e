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
from dataclasses import dataclass
from pathlib import Path

from training.cli import run

DONE = "eval.json"

Step = Callable[[int, int, str], None]  # (step, of steps, what) for a progress display
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def is_built(out: Path) -> bool:
    return (Path(out) / DONE).is_file()


def _steps(out: Path, steps: list[tuple[str, Callable[[], object]]], on_step: Step | None) -> Path:
    if out.exists() and not is_built(out):
        shutil.rmtree(out)  # a half-built bundle from an interrupted run
    for i, (what, step) in enumerate(steps):
        if on_step is not None:
            on_step(i, len(steps), what)
        step()
    return out


def build_solar_cells(out: str | Path, epochs: int = 3, input_size: int = 224, on_step: Step | None = None,
                      log: Log = _stderr) -> Path:
    """The solar-cell category from the elpv-dataset package: PatchCore, the CNN head, its evaluation."""
    from training.data import load_dataset
    from training.evaluate import evaluate_into
    from training.fit_patchcore import fit
    from training.train_classifier import TrainConfig, train
    from xai.patchcore import PatchCoreConfig

    out = Path(out)
    dataset = load_dataset("elpv", None)
    return _steps(out, [
        ("fitting the anomaly detector", lambda: fit(dataset, out, PatchCoreConfig(input_size=input_size),
                                                     category="solar-cells")),
        ("training the classifier", lambda: train(dataset, out, ["cnn"], TrainConfig(epochs=epochs),
                                                  input_size=input_size, category="solar-cells", log=log)),
        ("evaluating", lambda: evaluate_into(out, dataset, out / DONE)),
    ], on_step)


def build_mvtec(data: str | Path, out: str | Path, epochs: int = 3, explain_limit: int = 12,
                on_step: Step | None = None, log: Log = _stderr) -> Path:
    """A category from an mvtec-layout folder: PatchCore, both heads, the report-card methods' explanation table
    (on a seeded sample of the test defects) and the evaluation."""
    from training.data import load_dataset
    from training.evaluate import evaluate_into
    from training.evaluate_explanations import SLOW_CARD_CASES, explain_into
    from training.fit_patchcore import fit
    from training.train_classifier import TrainConfig, train
    from xai.explainers import report_card_methods
    from xai.patchcore import PatchCoreConfig

    out = Path(out)
    dataset = load_dataset("mvtec", data)
    config = PatchCoreConfig()
    return _steps(out, [
        ("fitting the anomaly detector", lambda: fit(dataset, out, config)),
        ("training the classifiers", lambda: train(dataset, out, ["cnn", "vit"], TrainConfig(epochs=epochs),
                                                   input_size=config.input_size, log=log)),
        ("scoring the explanations", lambda: explain_into(out, dataset, report_card_methods(), explain_limit,
                                                          out / "explanations.json", slow_cases=SLOW_CARD_CASES)),
        ("evaluating", lambda: evaluate_into(out, dataset, out / DONE)),
    ], on_step)


@dataclass(frozen=True)
class Build:
    """One default category to build: its name on the page, its bundle folder, and how it is built."""

    name: str
    out: Path
    run: Callable[[Path, Step], Path]  # (out, on_step) -> out


def default_builds(specs: list[str], root: str | Path, epochs: int = 3, elpv_size: int = 224) -> list[Build]:
    """Builds from specs: "solar-cells" (the elpv-dataset package) or "mvtec:FOLDER" (an mvtec-layout folder,
    named after it), each into root/<name>."""
    builds = []
    for spec in specs:
        if spec == "solar-cells":
            builds.append(Build("solar-cells", Path(root) / "solar-cells",
                                lambda out, step: build_solar_cells(out, epochs, elpv_size, step)))
        elif spec.startswith("mvtec:"):
            data = Path(spec.removeprefix("mvtec:"))
            builds.append(Build(data.name, Path(root) / data.name,
                                lambda out, step, data=data: build_mvtec(data, out, epochs, on_step=step)))
        else:
            raise ValueError(f"unknown default build {spec!r}: use solar-cells or mvtec:FOLDER")
    return builds


class BackgroundBuild:
    """Builds default categories one after another in a daemon thread and hands each to `on_ready(folder, name)`
    when done (a folder built before is handed over at once); `status` says what it is doing, for the page. So the
    app is up at once and each category appears when it is ready, named as built here."""

    def __init__(self, builds: list[Build], on_ready: Callable[[Path, str], None]):
        import threading

        self.builds, self.on_ready = builds, on_ready
        self.status = "waiting to start"
        self.ready: list[str] = []
        self.done = False
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._run, name="default-bundle-build", daemon=True)

    def start(self) -> BackgroundBuild:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        import logging

        for build in self.builds:
            def step(i: int, n: int, what: str, name: str = build.name) -> None:
                self.status = f"{name}, step {i + 1} of {n}: {what}"

            try:
                if not is_built(build.out):
                    build.run(build.out, step)
                self.status = f"{build.name}: loading"
                self.on_ready(build.out, build.name)
                self.ready.append(build.name)
            except BaseException as exc:  # reported on the page; the app keeps serving
                logging.getLogger("defect_xai").exception("building the default category %s failed", build.name)
                self.failed = f"{build.name}: {type(exc).__name__}: {exc}"
        self.status = "ready" if not self.failed else "failed (see the server log)"
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
