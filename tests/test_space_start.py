"""A bare `python app.py` with no reachable bundles: the app is up at once, says what it is building, and the
category appears without a restart (the builder is the project's own training code, here on generated data)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from test_app import free_port

from synthetic import add_defect, texture


def test_the_app_serves_at_once_and_the_built_category_appears(texture_data, tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    import training.defaults as defaults
    from app import build_app, build_status, launch_options, start_default_build
    from training.data import load_dataset
    from training.fit_patchcore import fit
    from xai.patchcore import PatchCoreConfig
    from xai.service import Catalogue

    def small_build(out, epochs, input_size, on_step):  # stands in for minutes of ELPV training
        on_step(0, 2, "fitting the anomaly detector")
        fit(load_dataset("mvtec", texture_data), out, PatchCoreConfig(), log=lambda m: None)
        on_step(1, 2, "evaluating")
        (out / defaults.DONE).write_text("{}")
        return out

    monkeypatch.setattr(defaults, "build_solar_cells", small_build)
    monkeypatch.setenv("DEFECT_XAI_CACHE", str(tmp_path / "cache"))
    catalogue = Catalogue.from_sources("defect-xai/not-cached")  # the Hub is out of reach
    assert not catalogue.inspectors
    build = start_default_build(catalogue)
    demo = build_app(catalogue, build=build)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_options())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        assert "not-cached" in str(client.predict(api_name="/info")["failed"])  # named, never replaced
        build.join(120)
        assert build.done and not build.failed, build.failed
        assert "ready" in build_status(build)
        info = client.predict(api_name="/info")
        assert "solar-cells (built here)" in info["categories"]  # no restart
        rng = np.random.default_rng(3)
        part = tmp_path / "part.png"
        Image.fromarray(add_defect(texture(rng), rng, "blob")[0]).save(part)
        _, verdict = client.predict(handle_file(str(part)), "solar-cells (built here)", api_name="/detect")
        assert verdict["is_defect"]
    finally:
        demo.close()
    # the next start finds it in the cache and builds nothing
    again = Catalogue.from_sources("defect-xai/not-cached")
    second = start_default_build(again)
    second.join(60)
    assert second.status == "ready" and "solar-cells (built here)" in again.categories
