"""A bare `python app.py` with no reachable bundles: the app is up at once, says what it is building, and the
category appears without a restart (the builder is the project's own training code, here on generated data)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from synthetic import add_defect, texture


def test_the_app_serves_at_once_and_the_built_category_appears(texture_data, tmp_path, monkeypatch, serve):
    from gradio_client import Client, handle_file

    import training.defaults as defaults
    from space.catalogue import Catalogue
    from space.render import build_markdown
    from space.server import start_default_build
    from space.settings import Settings
    from training.data import load_dataset
    from training.fit_patchcore import fit
    from xai.patchcore import PatchCoreConfig

    calls = []

    def small_build(out, epochs, input_size, on_step, log=None):  # stands in for minutes of ELPV training
        calls.append(out)
        on_step(0, 2, "fitting the anomaly detector")
        fit(load_dataset("mvtec", texture_data), out, PatchCoreConfig())
        on_step(1, 2, "evaluating")
        (out / defaults.DONE).write_text("{}")
        return out

    monkeypatch.setattr(defaults, "build_solar_cells", small_build)
    catalogue = Catalogue.from_sources("defect-xai/not-cached")  # the Hub is out of reach
    assert not catalogue.inspectors
    settings = Settings(build=("solar-cells",), build_cache=tmp_path / "cache")
    build = start_default_build(catalogue, settings)
    with serve(catalogue, build) as (url, _):
        client = Client(f"{url}/", verbose=False)
        assert "not-cached" in str(client.predict(api_name="/info")["failed"])  # named, never replaced
        build.join(120)
        assert build.done and not build.failed, build.failed
        assert "ready" in build_markdown(build)
        info = client.predict(api_name="/info")
        assert "solar-cells (built here)" in info["categories"]  # no restart
        rng = np.random.default_rng(3)
        part = tmp_path / "part.png"
        Image.fromarray(add_defect(texture(rng), rng, "blob")[0]).save(part)
        _, verdict = client.predict(handle_file(str(part)), "solar-cells (built here)", api_name="/detect")
        assert verdict["is_defect"]
    # the next start finds it in the cache and builds nothing
    again = Catalogue.from_sources("defect-xai/not-cached")
    second = start_default_build(again, settings)
    second.join(60)
    assert second.status == "ready" and "solar-cells (built here)" in again.categories and len(calls) == 1
