"""The page's layout and its wiring: which components each event reads and writes. What the events do lives in
`space.handlers`, what they may cost in `space.admission`'s table, and the numbers the page states in the settings.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from space.admission import EVENTS, Door, Limits
from space.catalogue import Catalogue
from space.components import UploadedFile, UploadedImage
from space.handlers import Handlers, request_caller
from space.render import build_markdown
from space.settings import Settings
from xai.explainers import slow_methods
from xai.reviews import in_words

PROCESS_API = inspect.signature(gr.Blocks.process_api)  # read once: every job passes through it
SENSITIVITY_CHOICES = [("as fitted (the fit's threshold)", "fit"),
                       *[(in_words(share), str(share)) for share in (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)]]


class AdmittedBlocks(gr.Blocks):
    """gr.Blocks whose every job of ours counts as running in the door from the start of its input processing to
    its answer, whether it fails in Gradio's processing or in our handler, so the door's count of a caller's jobs
    is exact (a job that never starts, its caller gone, is forgotten after its class's forget_s)."""

    def __init__(self, door: Door, trusted_hops: int, **options):
        super().__init__(**options)
        self.door, self.trusted_hops = door, trusted_hops

    async def process_api(self, *args, **kwargs):
        called = PROCESS_API.bind(self, *args, **kwargs).arguments
        fn, request, inputs = called["block_fn"], called.get("request"), called.get("inputs")
        fn = self.fns[fn] if isinstance(fn, int) else fn
        event = getattr(fn, "api_name", None)
        if event not in EVENTS or isinstance(request, list):
            return await super().process_api(*args, **kwargs)
        with self.door.running(request_caller(request, self.trusted_hops), event, inputs):
            return await super().process_api(*args, **kwargs)


@dataclass
class Wiring:
    """Binds an event listener to its handler with the door's concurrency for the event's class."""

    limits: Limits

    def __call__(self, listener: Callable, fn: Callable, inputs, outputs, private: bool = True, **options):
        event = fn.event
        return listener(fn, inputs, outputs, api_name=event, api_visibility="private" if private else "public",
                        concurrency_id=EVENTS[event], concurrency_limit=self.limits.rule(event).concurrency,
                        **options)


def build_page(handlers: Handlers, catalogue: Catalogue, settings: Settings, door: Door) -> gr.Blocks:
    """The Blocks app: the inspection page, the part section, and the hidden components of the public API."""
    wire = Wiring(settings.limits)
    with AdmittedBlocks(door, settings.trusted_hops, title="defect-xai", fill_width=True) as demo:
        gr.Markdown("# defect-xai — explainable visual inspection\nUpload a photo of a part: the verdict comes "
                    "first, then *where* (anomaly map) and *why* (the explanations you pick).")
        build_text = gr.Markdown(build_markdown(handlers.build)) if handlers.build is not None else None
        if catalogue.failures:
            gr.Markdown("**Not loaded:** " + "; ".join(f"`{s}`: {r}" for s, r in catalogue.public_failures().items()))
        with gr.Tabs():
            with gr.Tab("One picture"):
                category, image, own = _inspect_section(handlers, catalogue, wire)
                methods, card = _explain_section(handlers, catalogue, wire, category, image)
                _part_section(handlers, settings, wire, category, own, methods, card)
            with gr.Tab("Batch"):
                _batch_section(handlers, settings, wire, category)
        wire(category.change, handlers.choose_category, category, [methods, *card])
        if build_text is not None:  # until the category is built: refresh its status and the category list
            timer = gr.Timer(3.0)
            wire(timer.tick, handlers.build_tick, [category, own], [build_text, category, timer])
        _api(handlers, wire)
    # api_open=False: the REST routes cannot skip the queue (Spaces already default to it)
    demo.queue(default_concurrency_limit=2, max_size=settings.limits.queue_size, api_open=False)
    return demo


def _inspect_section(handlers: Handlers, catalogue: Catalogue, wire: Wiring):
    first = catalogue.categories[0] if catalogue.categories else None
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            category = gr.Dropdown(catalogue.choices(), value=first, label="Category")
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
            with gr.Row():
                good_btn = gr.Button("This is good")
                defect_btn = gr.Button("This is a defect")
            taught_text = gr.Markdown("Wrong verdict? Tell the detector: a part marked good joins its memory bank "
                                      "at once (no refit, undo below); on a served category you get your own copy.")
            with gr.Accordion("Verdict JSON (what /detect returns)", open=False):
                verdict = gr.JSON(label="Verdict")
    own = gr.State([])  # ids of the categories this browser session made: listed here only
    with gr.Accordion("Reviews and sensitivity of this category", open=False):
        reviews_text = gr.Markdown()
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                share = gr.Dropdown(SENSITIVITY_CHOICES, value="fit", label="Sensitivity: good parts flagged")
                share_btn = gr.Button("Set the sensitivity")
                undo_choice = gr.Dropdown([], label="Review to undo", allow_custom_value=False)
                undo_btn = gr.Button("Undo this review")
            with gr.Column(scale=2, min_width=300):
                reviews = gr.Dataframe(label="Reviewed pictures (newest first)", wrap=True, interactive=False)
    taught = [taught_text, verdict_img, verdict_text, verdict, own, category, reviews_text, reviews, undo_choice]
    wire(detect_btn.click, handlers.page_detect, [image, category], [verdict_img, verdict_text, verdict])
    wire(good_btn.click, handlers.page_feedback_good, [image, category, own], taught)
    wire(defect_btn.click, handlers.page_feedback_defect, [image, category, own], taught)
    wire(undo_btn.click, handlers.page_undo_feedback, [image, category, undo_choice, own], taught)
    wire(share_btn.click, handlers.page_sensitivity, [image, category, share, own], taught)
    wire(category.change, handlers.page_reviews, category, [reviews_text, reviews, undo_choice])
    return category, image, own


def _explain_section(handlers: Handlers, catalogue: Catalogue, wire: Wiring, category, image):
    first = catalogue.categories[0] if catalogue.categories else None
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            methods = gr.CheckboxGroup(handlers.methods_for(first), value=handlers.quick(first),
                                       label=f"Explanation methods ({', '.join(slow_methods())} take seconds)")
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
        card = list(handlers.card(first))  # detection table, explanation table, what the CNN head has learned
    wire(explain_btn.click, handlers.page_explain, [image, category, methods],
         [panels, explained, supporting, explanation])
    return methods, card


def _part_section(handlers: Handlers, settings: Settings, wire: Wiring, category, own, methods, card: list) -> None:
    caps = settings.categories
    with gr.Accordion("Add your part: a new category from a few good pictures", open=False):
        gr.Markdown(f"Give your part a name and 1-{caps.max_pictures} pictures of *good* parts (files, or one zip). "
                    "**Fit** builds the anomaly detector from them in seconds; the new category then appears in the "
                    f"list above, for this browser session only, for {caps.ttl_s / 60:.0f} minutes. Optional: up to "
                    f"{caps.max_defects} defective pictures, to check the detector on real defects.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                part_name = gr.Textbox(label="Name of the part", max_length=60, placeholder="e.g. hex bolt")
                part_files = UploadedFile(file_count="multiple", label="Good pictures (or a zip)",
                                          file_types=["image", ".zip"])
                part_defects = UploadedFile(file_count="multiple", label="Defective pictures (optional)",
                                            file_types=["image", ".zip"])
                fit_btn = gr.Button("Fit", variant="primary")
            with gr.Column(scale=1, min_width=300):
                part_card = gr.Markdown()
                with gr.Accordion("Fit JSON (what /fit returns)", open=False):
                    part_json = gr.JSON(label="Fit")
                with gr.Row():
                    train_btn = gr.Button("Train the explainable classifier")
                    cancel_btn = gr.Button("Cancel training", variant="stop")
                train_text = gr.Markdown("Training adds the CNN head that GradCAM, saliency and the other gradient "
                                         "methods explain; the report above says how long it should take.")
                with gr.Row():
                    download_btn = gr.Button("Download the category (bundle zip)")
                    bundle_file = gr.File(label="Bundle", interactive=False)
                publish_repo = gr.Textbox(label="Publish to your Hugging Face account as (repo name)",
                                          max_length=96, placeholder="my-part-defect-xai")
                if settings.on_space:
                    gr.LoginButton()
                else:
                    gr.Markdown("*Publishing needs Sign in with Hugging Face, which works on a Hugging Face Space "
                                "only; here, download the bundle and run* `python -m training.publish`.")
                publish_btn = gr.Button("Publish to the Hub")
                publish_text = gr.Markdown()
    # fits and trainings share one class: two at a time in all, one per caller (space.admission)
    wire(fit_btn.click, handlers.page_fit, [part_files, part_name, part_defects, own],
         [part_card, part_json, own, category])
    wire(train_btn.click, handlers.page_train, category, [train_text, methods, *card])
    wire(cancel_btn.click, handlers.page_cancel, category, train_text)
    wire(download_btn.click, handlers.page_download, category, bundle_file)
    wire(publish_btn.click, handlers.page_publish, [category, publish_repo], publish_text)


def _batch_section(handlers: Handlers, settings: Settings, wire: Wiring, category) -> None:
    caps = settings.batch
    gr.Markdown(f"Inspect up to {caps.max_pictures} pictures of the category chosen on the first tab at once "
                "(files, or a zip): a table of verdicts, the same rows as a CSV file, and the most anomalous with "
                "their anomaly maps. A whole folder or a day of pictures: `python -m training.inspect` "
                "(docs/batch-inspection.md).")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            files = UploadedFile(file_count="multiple", label="Pictures (or a zip)", file_types=["image", ".zip"])
            run_btn = gr.Button("Inspect all", variant="primary")
            summary = gr.Markdown()
            csv = gr.File(label="Results (CSV)", interactive=False)
        with gr.Column(scale=2, min_width=300):
            gallery = gr.Gallery(label="Most anomalous (anomaly map; cyan: above threshold)", columns=4,
                                 height="auto", object_fit="contain")
    table = gr.Dataframe(label="Every picture", wrap=True, interactive=False)
    wire(run_btn.click, handlers.page_detect_batch, [files, category], [summary, table, csv, gallery])


def _api(handlers: Handlers, wire: Wiring) -> None:
    """The public API: file inputs so xai.io sees every upload as it was sent."""
    with gr.Row(visible=False):
        api_image = UploadedFile(label="image")
        api_images = UploadedFile(file_count="multiple", label="images")
        api_name = gr.Textbox(label="name")
        api_category = gr.Textbox(label="category")
        api_method = gr.Textbox(label="method")
        api_verdict, api_feedback_id = gr.Textbox(label="verdict"), gr.Textbox(label="feedback_id")
        api_share = gr.Number(label="share", value=None)
        api_out_image = gr.Image(format="jpeg")  # ~10x smaller than PNG for photos: faster round trips
        api_out_json = gr.JSON()
        api_out_table, api_out_file, api_out_gallery = gr.Dataframe(), gr.File(), gr.Gallery(format="jpeg")
        buttons = [gr.Button() for _ in range(10)]
    wire(buttons[0].click, handlers.detect, [api_image, api_category], [api_out_image, api_out_json], private=False)
    wire(buttons[1].click, handlers.explain, [api_image, api_category, api_method], [api_out_image, api_out_json],
         private=False)
    wire(buttons[2].click, handlers.info, None, api_out_json, private=False)
    wire(buttons[3].click, handlers.fit, [api_images, api_name], api_out_json, private=False)
    wire(buttons[4].click, handlers.train_classifier, api_category, api_out_json, private=False)
    wire(buttons[5].click, handlers.cancel_training, api_category, api_out_json, private=False)
    wire(buttons[6].click, handlers.detect_batch, [api_images, api_category],
         [api_out_table, api_out_file, api_out_gallery], private=False)
    wire(buttons[7].click, handlers.feedback, [api_image, api_category, api_verdict], api_out_json, private=False)
    wire(buttons[8].click, handlers.undo_feedback, [api_category, api_feedback_id], api_out_json, private=False)
    wire(buttons[9].click, handlers.sensitivity, [api_category, api_share], api_out_json, private=False)
