"""defect-xai Space: Gradio Blocks wiring around xai.service (no model logic here).

Public API (gradio_client): /detect(image, category), /explain(image, category, method), /info(),
/fit(images, name) and /train_classifier(category) for a visitor's own part.
The API takes the upload as a file so that every bad input reaches xai.io and gets its own clear message;
the page's events (webcam, clipboard, upload) are private, but every event is guarded as if public
(xai.web: uploaded files only, per-caller limits, errors without server details).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from xai.categories import CategoryStore
from xai.io import MAX_BYTES, ImageInputError
from xai.outputs import OutputFolder
from xai.parts import Parts
from xai.render import explanations_markdown, part_card_markdown, verdict_markdown
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

EXPECTED = (ImageInputError, ServiceError, ValueError)  # ValueError: also UploadError, PartError, CategoryGone
CACHE_SWEEP = (300, 1800)  # every 5 min, delete uploads and returned files older than 30 min


def _paths(files) -> list[str]:
    if not files:
        raise ValueError("No pictures were sent.")
    return [_path(f) for f in (files if isinstance(files, list) else [files])]


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
    if catalogue.made is None:
        catalogue.made = CategoryStore()
    parts = Parts(catalogue)
    catalogue.made.load = parts.load  # a category kept in DEFECT_XAI_CATEGORY_DIR loads again when asked for
    outputs = outputs or OutputFolder(max_age_s=cache_sweep[1])
    CacheSweeper([demo_cache_folder(), outputs.root], *cache_sweep).start()

    def methods_for(category: str | None) -> list[str]:
        try:
            return catalogue.get(category).methods()
        except ValueError:  # none, an unknown one, or one made here that has gone
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
    fit_limit = CallerLimit(limits.fit_per_caller)
    fit_rate = CallerRate(limits.fit_burst, limits.fit_every_s)
    stops: dict[str, threading.Event] = {}  # category id -> cancel flag of its classifier training

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

    @contextmanager
    def heavy(request) -> Iterator[str]:
        """A fit or training of this caller: within their rate, one at a time (the caller's key inside)."""
        caller = client_key(request)
        fit_rate.take(caller)
        with fit_limit.hold(caller):
            yield caller

    def fit_as(images, name, request, defects=None) -> dict:
        with heavy(request) as caller:
            return parts.fit(_paths(images), name, caller, _paths(defects) if defects else None)

    def train_as(category, request) -> dict:
        with heavy(request):
            if not isinstance(category, str) or category in stops:
                raise ServiceError("That category's classifier is already training." if isinstance(category, str)
                                   else "The category must be the id that /fit returned.")
            stops[category] = threading.Event()
            try:
                return parts.train(category, stops[category])
            finally:
                stops.pop(category, None)

    def admission(n_inputs: int, request: gr.Request | None):
        """Runs as a fit or training is queued (Gradio's validator), so the queue itself stays bounded: one caller
        may have `fit_per_caller` of them queued or running, and at most `fit_queue` wait in all. (Checks made
        when a job starts would let junk wait there behind a long fit, filling the queue for everyone.)"""
        caller = client_key(request)
        waiting = list(getattr(demo._queue.event_queue_per_concurrency_id.get("fit"), "queue", []))
        mine = sum(client_key(event.request) == caller for event in waiting) + fit_limit.running(caller)
        refusal = None
        if mine >= limits.fit_per_caller:
            refusal = "You already have a fit or training queued or running; wait for it to finish."
        elif len(waiting) >= limits.fit_queue:
            refusal = f"{len(waiting)} fits and trainings are waiting already; try again in a few minutes."
        verdicts = [gr.validate(refusal is None or i > 0, refusal if i == 0 and refusal else "")
                    for i in range(n_inputs)]  # the refusal once, on the first input
        return verdicts[0] if len(verdicts) == 1 else verdicts  # Gradio takes one output's value bare

    # Gradio hands a validator the event's inputs and finds gr.Request by its named parameter: one per signature
    def admit_fit(images, name, request: gr.Request = None):
        return admission(2, request)

    def admit_page_fit(images, name, defects, own, request: gr.Request = None):
        return admission(4, request)

    def admit_train(category, request: gr.Request = None):
        return admission(1, request)

    @guarded(EXPECTED)
    def fit(images, name, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        """A new category from 1-300 good pictures of a part (files, or zips of them): its id and report card."""
        return fit_as(images, name, request)

    @guarded(EXPECTED)
    def train_classifier(category, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        """Train the CNN head of a category made by /fit (slow; queued): the gradient explainers become available."""
        return train_as(category, request)

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

    @guarded(EXPECTED)
    def page_fit(images, name, defects, own, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        fitted = fit_as(images, name, request, defects)
        own = [*(own or []), fitted["category"]][-20:]
        return (part_card_markdown(fitted), fitted, own,
                gr.Dropdown(choices=catalogue.choices(own), value=fitted["category"]))

    @guarded(EXPECTED)
    def page_train(category, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        trained = train_as(category, request)
        return (f"Classifier trained in {trained['seconds']:.0f} s; methods now: {', '.join(trained['methods'])}. "
                "The report card below has the explanation table.",
                gr.CheckboxGroup(choices=methods_for(category), value=quick(category)), *card(category))

    @guarded(EXPECTED)
    def page_cancel(category):
        flag = stops.get(category) if isinstance(category, str) else None
        if flag is None:
            return "No classifier is training for this category."
        flag.set()
        return "Stopping at the next step ..."

    @guarded(EXPECTED)
    def page_download(category, request: gr.Request = None):
        explain_rate.take(client_key(request))  # a zip of the bundle is a few seconds' work: not on a loop
        return catalogue.made.archive(_own_id(category))

    @guarded(EXPECTED)
    def page_publish(category, repo, token: gr.OAuthToken | None, request: gr.Request = None):
        explain_rate.take(client_key(request))
        return parts.publish(_own_id(category), repo, None if token is None else token.token)

    def _own_id(category) -> str:
        if not isinstance(category, str) or category not in catalogue.made:
            raise ServiceError("Choose a category you made (with Fit) first: only those can be downloaded "
                               "or published from here.")
        return category

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

        own = gr.State([])  # ids of the categories this browser session made: listed here only
        with gr.Accordion("Add your part: a new category from a few good pictures", open=False):
            gr.Markdown("Give your part a name and 1-300 pictures of *good* parts (files, or one zip). **Fit** builds "
                        "the anomaly detector from them in seconds; the new category then appears in the list above, "
                        "for this browser session only, for one hour. Optional: a few defective pictures, to check "
                        "the detector on real defects.")
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
                    train_text = gr.Markdown("Training adds the CNN head that GradCAM, saliency and the other "
                                             "gradient methods explain; the report above says how long it should "
                                             "take.")
                    with gr.Row():
                        download_btn = gr.Button("Download the category (bundle zip)")
                        bundle_file = gr.File(label="Bundle", interactive=False)
                    publish_repo = gr.Textbox(label="Publish to your Hugging Face account as (repo name)",
                                              max_length=96, placeholder="my-part-defect-xai")
                    if on_space():
                        gr.LoginButton()
                    else:
                        gr.Markdown("*Publishing needs Sign in with Hugging Face, which works on a Hugging Face "
                                    "Space only; here, download the bundle and run* `python -m training.publish`.")
                    publish_btn = gr.Button("Publish to the Hub")
                    publish_text = gr.Markdown()

        # page events (private)
        detect_btn.click(page_detect, [image, category], [verdict_img, verdict_text, verdict], api_name="ui_detect",
                         api_visibility="private", concurrency_id="detect", concurrency_limit=4)
        explain_btn.click(page_explain, [image, category, methods], [panels, explained, supporting, explanation],
                          api_name="ui_explain", api_visibility="private", concurrency_id="explain",
                          concurrency_limit=1)
        category.change(choose_category, category, [methods, detection_table, quality_table],
                        api_name="ui_category", api_visibility="private")
        # one heavy job at a time in all (fits and trainings share a queue, whose position the page shows)
        fit_btn.click(page_fit, [part_files, part_name, part_defects, own], [part_card, part_json, own, category],
                      api_name="ui_fit", api_visibility="private", concurrency_id="fit", concurrency_limit=1,
                      validator=admit_page_fit)
        train_btn.click(page_train, category, [train_text, methods, detection_table, quality_table],
                        api_name="ui_train", api_visibility="private", concurrency_id="fit", concurrency_limit=1,
                        validator=admit_train)
        cancel_btn.click(page_cancel, category, train_text, api_name="ui_cancel", api_visibility="private",
                         concurrency_id="info", concurrency_limit=8)
        download_btn.click(page_download, category, bundle_file, api_name="ui_download", api_visibility="private",
                           concurrency_id="info", concurrency_limit=8)
        publish_btn.click(page_publish, [category, publish_repo], publish_text, api_name="ui_publish",
                          api_visibility="private", concurrency_id="publish", concurrency_limit=1)

        if build is not None:  # until the category is built: refresh its status and the category list
            timer = gr.Timer(3.0)

            def tick(current, own):
                choices = catalogue.choices(own)
                values = [v for _, v in choices]
                value = current if current in values else (values[0] if values else None)
                return build_status(build), gr.Dropdown(choices=choices, value=value), gr.Timer(active=not build.done)

            timer.tick(tick, [category, own], [build_text, category, timer], api_name="ui_build_status",
                       api_visibility="private", concurrency_id="info", concurrency_limit=8)

        # public API: file inputs so xai.io sees every upload as sent
        with gr.Row(visible=False):
            api_image = UploadedFile(label="image")
            api_images = UploadedFile(file_count="multiple", label="images")
            api_name = gr.Textbox(label="name")
            api_category = gr.Textbox(label="category")
            api_method = gr.Textbox(label="method")
            api_out_image = gr.Image(format="jpeg")  # ~10x smaller than PNG for photos: faster round trips
            api_out_json = gr.JSON()
            api_detect, api_explain, api_info = gr.Button(), gr.Button(), gr.Button()
            api_fit, api_train = gr.Button(), gr.Button()
        api_detect.click(detect, [api_image, api_category], [api_out_image, api_out_json], api_name="detect",
                         concurrency_id="detect", concurrency_limit=4)
        api_explain.click(explain, [api_image, api_category, api_method], [api_out_image, api_out_json],
                          api_name="explain", concurrency_id="explain", concurrency_limit=1)
        api_info.click(info, None, api_out_json, api_name="info", concurrency_id="info", concurrency_limit=8)
        api_fit.click(fit, [api_images, api_name], api_out_json, api_name="fit", concurrency_id="fit",
                      concurrency_limit=1, validator=admit_fit)
        api_train.click(train_classifier, api_category, api_out_json, api_name="train_classifier",
                        concurrency_id="fit", concurrency_limit=1, validator=admit_train)
    # api_open=False: the REST routes cannot skip the queue (Spaces already default to it)
    demo.queue(default_concurrency_limit=2, max_size=256, api_open=False)
    return demo


def on_space() -> bool:
    """Whether the app runs on a Hugging Face Space, where Sign in with Hugging Face (OAuth) exists."""
    from gradio.utils import get_space

    return bool(get_space())


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
    catalogue.made = CategoryStore(folder=os.environ.get("DEFECT_XAI_CATEGORY_DIR") or None)
    build = start_default_build(catalogue) if sources is None and not catalogue.inspectors else None
    demo = build_app(catalogue, build=build)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME"),
                server_port=int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None,
                **launch_options())


if __name__ == "__main__":
    main()
