"""The house rules: the library imports neither Gradio nor the training package, imports run one way
(space -> training -> xai), and every event of the page passes the door."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGES = ("xai", "training", "space")
ALLOWED = {"xai": {"xai"}, "training": {"xai", "training"}, "space": {"xai", "training", "space"}}


def modules(package: str) -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in (ROOT / package).rglob("*.py"))


def test_every_library_module_imports_without_gradio_or_training():
    """Each xai module in a fresh interpreter: neither gradio nor training gets loaded."""
    code = ("import importlib, sys\n"
            f"for name in {modules('xai')!r}:\n"
            "    importlib.import_module(name)\n"
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'gradio', 'training', 'space'})\n"
            "print(','.join(loaded))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"the library loaded {out.stdout.strip()}"


def imported(path) -> set[str]:
    """The first-party packages a source file imports (at top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES) | ({"gradio"} & {n for n in found})


def test_imports_run_one_way():
    """No arrow from a lower package to a higher one (hence no circle between packages), and Gradio only in the
    Space package."""
    upward = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for target in imported(path) - ALLOWED[package]:
                if target != "gradio" or package != "space":
                    upward.append(f"{path.relative_to(ROOT)} -> {target}")
    assert upward == []


def test_every_event_of_the_page_is_in_the_door_table(classifier_bundle):
    from space.admission import EVENTS
    from space.catalogue import Catalogue
    from space.server import create
    from space.settings import Settings

    space = create(Settings(), Catalogue.from_sources(str(classifier_bundle)))
    names = {fn.api_name for fn in space.demo.fns.values()}
    ours = {n for n in names if n and not n.startswith("load_example")}
    assert ours <= set(EVENTS), ours - set(EVENTS)
    assert {"detect", "explain", "info", "fit", "train_classifier"} <= ours
