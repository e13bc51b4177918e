"""defect-xai Space: Gradio Blocks wiring around xai.service (no model logic here).

Public API (gradio_client): /detect(image, category), /explain(image, category, method), /info().
The API takes the upload as a file so that every bad input reaches xai.io and gets its own clear message;
the page's events (webcam, clipboard, upload) are private.
"""

from __future__ import annotations

import os

import gradio as gr

from xai.io import ImageInputError
from xai.service import Catalogue, ServiceError

SLOW_METHODS = ("smoothgrad", "integrated_gradients", "occlusion", "shap")
EXPECTED = (ImageInputError, ServiceError, ValueError)


def _guard(fn):
    """Turn expected failures into gr.Error (a message, never a stack trace); the app keeps serving."""
    def wrapped(*args):
        try:
            return fn(*args)
        except EXPECTED as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _path(file) -> str:
    if file is None:
        raise ImageInputError("No image was sent.")
    return file if isinstance(file, str) else getattr(file, "name", str(file))


def build_app(catalogue: Catalogue) -> gr.Blocks:
    """The Blocks app over an already loaded catalogue."""
    categories = catalogue.categories

    def methods_for(category: str | None) -> list[str]:
        try:
            return catalogue.get(category).methods()
        except ServiceError:
            return []

    @_guard
    def detect(image, category):
        """Verdict and anomaly-map overlay for one image of a part."""
        return catalogue.detect(_path(image), category)

    @_guard
    def explain(image, category, method, progress=gr.Progress()):
        """One explanation method's overlay and its JSON."""
        if method in SLOW_METHODS:
            progress(0, desc=f"{method}: running the model many times ...")
        return catalogue.explain(_path(image), category, method)

    def info():
        """Categories with provenance and metrics, explanation methods, versions."""
        return catalogue.info()

    def report_card(category):
        metrics = catalogue.info()["categories"].get(category, {}).get("metrics", {}) if category else {}
        return metrics or {"note": "this bundle has no stored evaluation yet"}

    with gr.Blocks(title="defect-xai", fill_width=True) as demo:
        gr.Markdown("# defect-xai — explainable visual inspection\nUpload a photo of a part: the verdict comes "
                    "first, then *where* (anomaly map) and *why* (the explanations you pick).")
        if catalogue.failures:
            gr.Markdown("**Not loaded:** " + "; ".join(f"`{s}`: {r}" for s, r in catalogue.failures.items()))
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                category = gr.Dropdown(categories, value=categories[0] if categories else None, label="Category")
                image = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="Part")
                detect_btn = gr.Button("Inspect", variant="primary")
            with gr.Column(scale=1, min_width=280):
                verdict_img = gr.Image(label="Anomaly map (cyan: above threshold)", format="png")
                verdict = gr.JSON(label="Verdict")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                first_methods = methods_for(categories[0] if categories else None)
                method = gr.Dropdown(first_methods, value=first_methods[0] if first_methods else None,
                                     label="Explanation method (slow ones: smoothgrad, IG, occlusion, shap)")
                explain_btn = gr.Button("Explain")
            with gr.Column(scale=1, min_width=280):
                explain_img = gr.Image(label="Explanation", format="png")
                explanation = gr.JSON(label="Explanation details")
        with gr.Accordion("Report card: this category's measured quality", open=False):
            card = gr.JSON(value=report_card(categories[0]) if categories else {})

        # page events (private)
        detect_btn.click(detect, [image, category], [verdict_img, verdict], api_name="ui_detect",
                         api_visibility="private",
                         concurrency_id="detect", concurrency_limit=4)
        explain_btn.click(explain, [image, category, method], [explain_img, explanation], api_name="ui_explain",
                          api_visibility="private", concurrency_id="explain", concurrency_limit=1)
        category.change(lambda c: (gr.Dropdown(choices=methods_for(c)), report_card(c)), category,
                        [method, card], api_name="ui_category", api_visibility="private")

        # public API: file inputs so xai.io sees every upload as sent
        with gr.Row(visible=False):
            api_image = gr.File(label="image")
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
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


def main() -> None:
    catalogue = Catalogue.from_sources()
    demo = build_app(catalogue)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME"),
                server_port=int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None,
                max_file_size="25mb", show_error=True)


if __name__ == "__main__":
    main()
