"""defect-xai Space: Gradio Blocks wiring around xai.service (no model logic here).

Public API (gradio_client): /detect(image, category), /explain(image, category, method), /info().
The API takes the upload as a file so that every bad input reaches xai.io and gets its own clear message;
the page's events (webcam, clipboard, upload) are private, but every event is guarded as if public
(xai.web: uploaded files only, per-caller limits, errors without server details).
"""

from __future__ import annotations

import logging
import os

import gradio as gr

from xai.io import MAX_BYTES, ImageInputError
from xai.outputs import OutputFolder
from xai.render import explanations_markdown, verdict_markdown
from xai.service import CAPTIONS, DETECTION_COLUMNS, QUALITY_COLUMNS, SLOW_METHODS, Catalogue, ServiceError
from xai.web import (
    CacheSweeper,
    CallerLimit,
    CallerRate,
    Limits,
    UploadedFile,
    UploadedImage,
    client_key,
    demo_cache_folder,
    guarded,
)

EXPECTED = (ImageInputError, ServiceError, ValueError)
CACHE_SWEEP = (300, 1800)  # every 5 min, delete uploads and returned files older than 30 min


def _path(file) -> str:
    if file is None:
        raise ImageInputError("No image was sent.")
    return file if isinstance(file, str) else getattr(file, "name", str(file))


def build_app(catalogue: Catalogue, outputs: OutputFolder | None = None, limits: Limits | None = None,
              cache_sweep: tuple[int, int] = CACHE_SWEEP, build=None) -> gr.Blocks:
    """The Blocks app over an already loaded catalogue; returned pictures are written to `outputs`; `limits` bound
    what one caller may cost; `cache_sweep` (every s, older than s) bounds Gradio's cache of uploads and results;
    `build` (training.defaults.BackgroundBuild) is a category being built, shown until it is ready."""
    categories = catalogue.categories
    outputs = outputs or OutputFolder(max_age_s=cache_sweep[1])
    CacheSweeper([demo_cache_folder(), outputs.root], *cache_sweep).start()

    def methods_for(category: str | None) -> list[str]:
        try:
            return catalogue.get(category).methods()
        except ServiceError:
            return []

    def quick(category: str | None) -> list[str]:
        return [m for m in methods_for(category) if m not in SLOW_METHODS][:3]

    def card(category: str | None):
        detection, quality = catalogue.report_card(category) if categories else ([], [])
        return gr.Dataframe(value=detection, headers=DETECTION_COLUMNS), gr.Dataframe(value=quality,
                                                                                      headers=QUALITY_COLUMNS)

    limits = limits or Limits()
    detect_limit = CallerLimit(limits.detect_per_caller)
    detect_rate = CallerRate(limits.detect_burst, limits.detect_every_s)
    explain_rate = CallerRate(limits.explain_burst, limits.explain_every_s)

    def detect_as(image, category, fmt: str, request: gr.Request | None):
        caller = client_key(request)
        detect_rate.take(caller)
        with detect_limit.hold(caller):
            picture, payload = catalogue.detect(_path(image), category)
        return outputs.save(picture, fmt), payload

    @guarded(EXPECTED)
    def detect(image, category, request: gr.Request = None):
        """Verdict and anomaly-map overlay for one image of a part."""
        return detect_as(image, category, "jpeg", request)

    @guarded(EXPECTED)
    def explain(image, category, method, progress=gr.Progress(), request: gr.Request = None):
        """One explanation method's overlay and its JSON."""
        explain_rate.take(client_key(request))
        if not isinstance(method, str):
            raise ServiceError("The method must be one method name.")
        if method in SLOW_METHODS:
            progress(0, desc=f"{method}: running the model many times ...")
        picture, payload = catalogue.explain(_path(image), category, method)
        return outputs.save(picture), payload

    def info():
        """Categories with provenance and metrics, explanation methods, versions."""
        return catalogue.info()

    @guarded(EXPECTED)
    def page_detect(image, category, request: gr.Request = None):
        picture, verdict = detect_as(image, category, "png", request)
        return picture, verdict_markdown(verdict), verdict

    @guarded(EXPECTED)
    def page_explain(image, category, methods, progress=gr.Progress(), request: gr.Request = None):
        explain_rate.take(client_key(request))

        def step(i: int, n: int, method: str) -> None:
            progress((i, n), desc=f"{method}" + (" (slow: many model runs)" if method in SLOW_METHODS else ""))

        panels, supporting, payloads = catalogue.explain_many(_path(image), category, methods or [], step)
        return ([(outputs.save(p, "png"), c) for p, c in panels], explanations_markdown(payloads, CAPTIONS),
                [(outputs.save(p), c) for p, c in supporting], payloads)

    def choose_category(category):
        return (gr.CheckboxGroup(choices=methods_for(category), value=quick(category)), *card(category))

    first = categories[0] if categories else None
    with gr.Blocks(title="defect-xai", fill_width=True) as demo:
        gr.Markdown("# defect-xai — explainable visual inspection\nUpload a photo of a part: the verdict comes "
                    "first, then *where* (anomaly map) and *why* (the explanations you pick).")
        if build is not None:
            build_text = gr.Markdown(build_status(build))
        if catalogue.failures:
            gr.Markdown("**Not loaded:** " + "; ".join(f"`{s}`: {r}" for s, r in catalogue.public_failures().items()))
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                category = gr.Dropdown(categories, value=first, label="Category")
                # image_mode=None: the original upload reaches xai.io unconverted, as /detect's file does, so
                # transparency and 16-bit pictures get the same verdict on the page and through the API
                image = UploadedImage(type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"],
                                      label="Part")
                detect_btn = gr.Button("Inspect", variant="primary")
                examples = catalogue.examples()
                if examples:
                    gr.Examples(examples, [image, category], label="Examples (from the bundles' test splits)",
                                examples_per_page=12, cache_examples=False)
            with gr.Column(scale=1, min_width=300):
                verdict_text = gr.Markdown("Upload a part and press **Inspect**.")
                verdict_img = gr.Image(label="Anomaly map (cyan: above threshold)", format="png", interactive=False)
                with gr.Accordion("Verdict JSON (what /detect returns)", open=False):
                    verdict = gr.JSON(label="Verdict")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                methods = gr.CheckboxGroup(methods_for(first), value=quick(first), label="Explanation methods "
                                           "(smoothgrad, integrated_gradients, occlusion and shap take seconds)")
                explain_btn = gr.Button("Explain", variant="primary")
                explained = gr.Markdown()
                with gr.Accordion("Explanation JSON (what /explain returns, per method)", open=False):
                    explanation = gr.JSON(label="Explanation details")
            with gr.Column(scale=2, min_width=300):
                panels = gr.Gallery(label="Explanations (method · time — what it answers)", columns=3,
                                    height="auto", object_fit="contain", format="png")
                supporting = gr.Gallery(label="Evidence: SHAP plot, nearest good images and patches", columns=4,
                                        height="auto", object_fit="contain")
        with gr.Accordion("Report card: this category's measured quality", open=False):
            gr.Markdown("Detection on the test split, and how far each explanation can be trusted on the test "
                        "defects (pointing game and heatmap AUROC: higher is better; randomisation similarity: "
                        "lower is better, the map must change when the model's weights are randomised).")
            detection_table, quality_table = card(first)

        # page events (private)
        detect_btn.click(page_detect, [image, category], [verdict_img, verdict_text, verdict], api_name="ui_detect",
                         api_visibility="private", concurrency_id="detect", concurrency_limit=4)
        explain_btn.click(page_explain, [image, category, methods], [panels, explained, supporting, explanation],
                          api_name="ui_explain", api_visibility="private", concurrency_id="explain",
                          concurrency_limit=1)
        category.change(choose_category, category, [methods, detection_table, quality_table],
                        api_name="ui_category", api_visibility="private")

        if build is not None:  # until the category is built: refresh its status and the category list
            timer = gr.Timer(3.0)

            def tick(current):
                choices = catalogue.categories
                value = current if current in choices else (choices[0] if choices else None)
                return build_status(build), gr.Dropdown(choices=choices, value=value), gr.Timer(active=not build.done)

            timer.tick(tick, category, [build_text, category, timer], api_name="ui_build_status",
                       api_visibility="private", concurrency_id="info", concurrency_limit=8)

        # public API: file inputs so xai.io sees every upload as sent
        with gr.Row(visible=False):
            api_image = UploadedFile(label="image")
            api_category = gr.Textbox(label="category")
            api_method = gr.Textbox(label="method")
            api_out_image = gr.Image(format="jpeg")  # ~10x smaller than PNG for photos: faster round trips
            api_out_json = gr.JSON()
            api_detect, api_explain, api_info = gr.Button(), gr.Button(), gr.Button()
        api_detect.click(detect, [api_image, api_category], [api_out_image, api_out_json], api_name="detect",
                         concurrency_id="detect", concurrency_limit=4)
        api_explain.click(explain, [api_image, api_category, api_method], [api_out_image, api_out_json],
                          api_name="explain", concurrency_id="explain", concurrency_limit=1)
        api_info.click(info, None, api_out_json, api_name="info", concurrency_id="info", concurrency_limit=8)
    # api_open=False: the REST routes cannot skip the queue (Spaces already default to it)
    demo.queue(default_concurrency_limit=2, max_size=256, api_open=False)
    return demo


def build_status(build) -> str:
    if build.done and not build.failed:
        return "**solar-cells (built here)** is ready: built on this machine from the elpv-dataset package."
    head = ("The published bundles could not be fetched, so this app is building the solar-cell category with "
            "its own training code from the elpv-dataset package (a few minutes). ")
    if build.failed:
        return head + "**The build failed** (see the server log); the rest of the app works."
    return head + f"**Now: {build.status}.** It appears in the category list when ready, named *(built here)*."


def start_default_build(catalogue: Catalogue):
    """No DEFECT_XAI_BUNDLES and no default Hub bundle reachable: build (or reuse, from the cache of an earlier
    start) the solar-cell category in the background. Never passed off as the published bundle."""
    from pathlib import Path

    from training.defaults import BackgroundBuild

    cache = Path(os.environ.get("DEFECT_XAI_CACHE") or Path.home() / ".cache" / "defect-xai" / "bundles")
    return BackgroundBuild(cache / "solar-cells",
                           lambda folder: catalogue.add_source(str(folder), "solar-cells (built here)")).start()


def launch_options() -> dict:
    """How the app is served: errors reach callers only as our own messages (gr.Error), uploads are capped at
    what xai.io accepts, and sessions held in memory are bounded."""
    return {"max_file_size": MAX_BYTES, "show_error": False, "state_session_capacity": 1000, "mcp_server": False}


def main() -> None:
    import torch

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # concurrent requests share the cores, not oversubscribe
    sources = os.environ.get("DEFECT_XAI_BUNDLES")
    catalogue = Catalogue.from_sources(sources)
    build = start_default_build(catalogue) if sources is None and not catalogue.inspectors else None
    demo = build_app(catalogue, build=build)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME"),
                server_port=int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None,
                **launch_options())


if __name__ == "__main__":
    main()
