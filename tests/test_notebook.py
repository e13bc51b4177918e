"""The training notebook runs end to end on a tiny generated dataset, so it cannot rot."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

pytestmark = pytest.mark.slow  # a minute or more: `pytest -m "not slow"` skips it


def test_notebook_runs_with_a_tiny_configuration(texture_data, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    for key, value in {"DATA": str(texture_data), "LAYOUT": "mvtec", "OUT": str(out), "ARCHS": "cnn",
                       "EPOCHS": "1", "VIEWS": "2", "REPO_ID": "me/weave"}.items():
        monkeypatch.setenv(f"DEFECT_XAI_NB_{key}", value)
    notebook = nbformat.read(ROOT / "training" / "train.ipynb", as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") for cell in code_cells), "commit the notebook without outputs"
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "training")}}).execute()
    meta = json.loads((out / "bundle.json").read_text())
    assert {"patchcore", "classifier_cnn"} <= set(meta["components"])
    text = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "would upload" in text and "threshold" in text
    assert any("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))
