"""The Space's event functions, public and private, on one object given its dependencies when it is made.

Every handler answers a failure the same way: a `UserError`'s text reaches the caller; anything else is logged with
its trace under a short id, and the caller gets one line with that id (nothing of its text or paths). What a
handler may cost is the door's business (`space.admission`), before it runs.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable

import gradio as gr

from space.admission import caller_key
from space.batches import BatchInspection
from space.catalogue import DETECTION_COLUMNS, QUALITY_COLUMNS, Catalogue, ServiceError
from space.outputs import OutputFolder
from space.parts import Parts
from space.render import (
    build_markdown,
    explanations_markdown,
    feedback_markdown,
    part_card_markdown,
    reviews_markdown,
    verdict_markdown,
)
from space.settings import Settings
from space.teaching import REVIEW_COLUMNS, Teaching
from xai.errors import UserError
from xai.explainers import captions, slow_methods
from xai.io import ImageInputError

LOG = logging.getLogger("defect_xai")
QUICK_METHODS = 3  # methods ticked when a category is chosen: its first fast ones
MAX_OWN = 20  # categories one page session lists as its own


def handler(event: str) -> Callable:
    """Method decorator: the handler of `event` (its api_name, which the door's table classes); its failures reach
    the caller as described above. Keeps the signature: Gradio reads it for gr.Request and gr.Progress."""
    def wrap(fn):
        @functools.wraps(fn)
        def wrapped(self: Handlers, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except gr.Error:
                raise
            except UserError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            except Exception:
                error_id = uuid.uuid4().hex[:8]
                LOG.exception("request failed [%s] in %s", error_id, fn.__name__)
                raise gr.Error(f"Something went wrong on the server (error id {error_id}); the request was not "
                               "completed. Please try again or report the id.", print_exception=False) from None
        wrapped.event = event
        return wrapped
    return wrap


def request_caller(request: gr.Request | None, trusted_hops: int) -> str:
    """The caller key of a Gradio request (see space.admission.caller_key); "local" for an in-process call."""
    if request is None:
        return "local"
    host = getattr(getattr(request, "client", None), "host", None)
    return caller_key(host, {k.lower(): v for k, v in (request.headers or {}).items()}, trusted_hops)


def _paths(files) -> list[str]:
    if not files:
        raise ServiceError("No pictures were sent.")
    return [_path(f) for f in (files if isinstance(files, list) else [files])]


def _path(file) -> str:
    if file is None:
        raise ImageInputError("No image was sent.")
    return file if isinstance(file, str) else getattr(file, "name", str(file))


def _remember(own, cid: str) -> list[str]:
    """The page session's own category ids with `cid` (once, newest last), at most MAX_OWN."""
    return [*(c for c in own or [] if c != cid), cid][-MAX_OWN:]


class Handlers:
    """What each event does: the service's answer, saved pictures, and the page's updates."""

    def __init__(self, catalogue: Catalogue, parts: Parts, outputs: OutputFolder, settings: Settings, build=None):
        self.catalogue, self.parts, self.outputs = catalogue, parts, outputs
        self.settings, self.build = settings, build
        self.batch = BatchInspection(catalogue, outputs, settings.batch)
        self.teaching = Teaching(catalogue)

    def caller(self, request: gr.Request | None) -> str:
        """The caller's key (the owner of what they make), as the door computed it when the job joined."""
        return request_caller(request, self.settings.trusted_hops)

    # -- what the page shows for a category ------------------------------------------------------
    def methods_for(self, category: str | None) -> list[str]:
        try:
            return self.catalogue.get(category).methods()
        except UserError:  # none, an unknown one, or one made here that has gone
            return []

    def quick(self, category: str | None) -> list[str]:
        slow = slow_methods()
        return [m for m in self.methods_for(category) if m not in slow][:QUICK_METHODS]

    def card(self, category: str | None) -> tuple[gr.Dataframe, gr.Dataframe, gr.Image]:
        """The report card's tables and the picture of what the CNN head has learned."""
        detection, quality = self.catalogue.report_card(category) if self.catalogue.categories else ([], [])
        learned = self.catalogue.learned(category) if self.catalogue.categories else None
        picture = gr.Image(value=self.outputs.save(learned[0], "png"), label=learned[1], visible=True) \
            if learned else gr.Image(value=None, label="What the CNN head has learned (it has none yet)",
                                     visible=False)
        return (gr.Dataframe(value=detection, headers=DETECTION_COLUMNS),
                gr.Dataframe(value=quality, headers=QUALITY_COLUMNS), picture)

    def method_choices(self, category: str | None) -> gr.CheckboxGroup:
        return gr.CheckboxGroup(choices=self.methods_for(category), value=self.quick(category))

    # -- public API --------------------------------------------------------------------------------
    @handler("detect")
    def detect(self, image, category, request: gr.Request = None):
        """Verdict and anomaly-map overlay for one image of a part."""
        picture, payload = self.catalogue.detect(_path(image), category)
        return self.outputs.save(picture, "jpeg"), payload

    @handler("detect_batch")
    def detect_batch(self, files, category, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        """Many pictures (files, or zips of them) of one category: the table of verdicts, the same rows as a CSV
        file, and the most anomalous pictures with their overlays."""
        return self.batch.run(_paths(files), category)

    @handler("explain")
    def explain(self, image, category, method, progress=gr.Progress(), request: gr.Request = None):
        """One explanation method's overlay and its JSON."""
        if not isinstance(method, str):
            raise ServiceError("The method must be one method name.")
        if method in slow_methods():
            progress(0, desc=f"{method}: running the model many times ...")
        picture, payload = self.catalogue.explain(_path(image), category, method)
        return self.outputs.save(picture), payload

    @handler("info")
    def info(self, request: gr.Request = None):
        """Categories with provenance and metrics, explanation methods, versions."""
        return self.catalogue.info()

    @handler("fit")
    def fit(self, images, name, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        """A new category from 1-300 good pictures of a part (files, or zips of them): its id and report card."""
        return self.parts.fit(_paths(images), name, self.caller(request))

    @handler("train_classifier")
    def train_classifier(self, category, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        """Train the CNN head of a category made by /fit (slow; queued): the gradient explainers become available."""
        return self.parts.train(category, self.caller(request))

    @handler("cancel_training")
    def cancel_training(self, category, request: gr.Request = None):
        """Stop the classifier training of a category you made, at its next step (it keeps what it had)."""
        cancelled = self.parts.cancel(category, self.caller(request))
        return {"category": category, "cancelled": cancelled,
                "message": "Stopping at the next step." if cancelled else "No classifier is training for it."}

    @handler("feedback")
    def feedback(self, image, category, verdict, request: gr.Request = None):
        """Review one picture: "good" teaches the category's detector this picture is good (its patches join the
        bank, no refit), "defect" keeps it as a labelled defect. A served category becomes your own copy first."""
        return self.teaching.feedback(_path(image), category, verdict, self.caller(request))

    @handler("undo_feedback")
    def undo_feedback(self, category, feedback_id, request: gr.Request = None):
        """Undo one review of a category you made: its scores are exactly what they were without it."""
        return self.teaching.undo(category, feedback_id, self.caller(request))

    @handler("sensitivity")
    def sensitivity(self, category, share, request: gr.Request = None):
        """Set the share of good parts the detector may flag (0.001-0.5; empty: the fit's threshold), read off the
        category's good pictures; a served category becomes your own copy first."""
        return self.teaching.sensitivity(category, share, self.caller(request))

    # -- the page's own events ---------------------------------------------------------------------
    @handler("ui_detect")
    def page_detect(self, image, category, request: gr.Request = None):
        picture, verdict = self.catalogue.detect(_path(image), category)
        return self.outputs.save(picture, "png"), verdict_markdown(verdict), verdict

    @handler("ui_detect_batch")
    def page_detect_batch(self, files, category, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        rows, csv, gallery = self.batch.run(_paths(files), category)
        defects = int(rows["is_defect"].map(bool).sum())
        errors = int(rows["error"].map(bool).sum())
        summary = (f"**{len(rows)} pictures: {defects} defective, {len(rows) - defects - errors} good"
                   + (f", {errors} could not be read" if errors else "") + ".** The most anomalous are below; the "
                   "whole table is in the CSV.")
        return summary, rows, csv, gallery

    @handler("ui_explain")
    def page_explain(self, image, category, methods, progress=gr.Progress(), request: gr.Request = None):
        slow = slow_methods()

        def step(i: int, n: int, method: str) -> None:
            progress((i, n), desc=f"{method}" + (" (slow: many model runs)" if method in slow else ""))

        panels, supporting, payloads = self.catalogue.explain_many(_path(image), category, methods or [], step)
        return ([(self.outputs.save(p, "png"), c) for p, c in panels], explanations_markdown(payloads, captions()),
                [(self.outputs.save(p), c) for p, c in supporting], payloads)

    @handler("ui_feedback_good")
    def page_feedback_good(self, image, category, own, request: gr.Request = None):
        return self._page_feedback(image, category, own, "good", request)

    @handler("ui_feedback_defect")
    def page_feedback_defect(self, image, category, own, request: gr.Request = None):
        return self._page_feedback(image, category, own, "defect", request)

    def _page_feedback(self, image, category, own, verdict: str, request):
        answer = self.teaching.feedback(_path(image), category, verdict, self.caller(request))
        return self._after_teaching(image, answer, own, feedback_markdown(answer))

    @handler("ui_undo_feedback")
    def page_undo_feedback(self, image, category, feedback_id, own, request: gr.Request = None):
        if not feedback_id:
            raise ServiceError("Choose the review to undo first.")
        answer = self.teaching.undo(category, feedback_id, self.caller(request))
        return self._after_teaching(image, answer, own, f"Review `{feedback_id}` undone: the category scores as "
                                                        "it did without it.")

    @handler("ui_sensitivity")
    def page_sensitivity(self, image, category, share, own, request: gr.Request = None):
        answer = self.teaching.sensitivity(category, share, self.caller(request))
        return self._after_teaching(image, answer, own, f"Sensitivity: {answer['sensitivity']['in_words']} "
                                                        f"(threshold {answer['threshold']:.4f}).")

    @handler("ui_reviews")
    def page_reviews(self, category, request: gr.Request = None):
        return self._reviews_view(category)

    def _after_teaching(self, image, answer: dict, own, message: str):
        """The page after a review, an undo or a new sensitivity: the taught category chosen (a served one's copy
        added to this session's list), the picture's verdict again, and the review list."""
        cid = answer["category"]
        own = _remember(own, cid)
        shown = verdict_text = verdict = None
        if image is not None:
            picture, verdict = self.catalogue.detect(_path(image), cid)
            shown, verdict_text = self.outputs.save(picture, "png"), verdict_markdown(verdict)
        return (message, shown, verdict_text, verdict, own,
                gr.Dropdown(choices=self.catalogue.choices(own), value=cid), *self._reviews_view(cid))

    def _reviews_view(self, category):
        rows = self.teaching.reviews(category)
        try:
            summary = reviews_markdown(self.catalogue.get(category).sensitivity(), len(rows))
        except UserError:
            summary = ""
        return (summary, gr.Dataframe(value=rows, headers=REVIEW_COLUMNS),
                gr.Dropdown(choices=[r[0] for r in rows], value=None))

    @handler("ui_category")
    def choose_category(self, category, request: gr.Request = None):
        return (self.method_choices(category), *self.card(category))

    @handler("ui_fit")
    def page_fit(self, images, name, defects, own, progress=gr.Progress(track_tqdm=True),
                 request: gr.Request = None):
        fitted = self.parts.fit(_paths(images), name, self.caller(request), _paths(defects) if defects else None)
        own = _remember(own, fitted["category"])
        return (part_card_markdown(fitted), fitted, own,
                gr.Dropdown(choices=self.catalogue.choices(own), value=fitted["category"]))

    @handler("ui_train")
    def page_train(self, category, progress=gr.Progress(track_tqdm=True), request: gr.Request = None):
        trained = self.parts.train(category, self.caller(request))
        return (f"Classifier trained in {trained['seconds']:.0f} s; methods now: {', '.join(trained['methods'])}. "
                "The report card below has the explanation table.", self.method_choices(category),
                *self.card(category))

    @handler("ui_cancel")
    def page_cancel(self, category, request: gr.Request = None):
        if not self.parts.cancel(category, self.caller(request)):
            return "No classifier is training for this category."
        return "Stopping at the next step ..."

    @handler("ui_download")
    def page_download(self, category, request: gr.Request = None):
        return self.parts.download(self._own_id(category), self.caller(request))

    @handler("ui_publish")
    def page_publish(self, category, repo, token: gr.OAuthToken | None, request: gr.Request = None):
        return self.parts.publish(self._own_id(category), repo, None if token is None else token.token,
                                  self.caller(request))

    @handler("ui_build_status")
    def build_tick(self, current, own, request: gr.Request = None):
        """Until the category being built is ready: its status and the category list."""
        choices = self.catalogue.choices(own)
        values = [v for _, v in choices]
        value = current if current in values else (values[0] if values else None)
        return (build_markdown(self.build), gr.Dropdown(choices=choices, value=value),
                gr.Timer(active=not self.build.done))

    def _own_id(self, category) -> str:
        if not isinstance(category, str) or category not in self.catalogue.made:
            raise ServiceError("Choose a category you made (with Fit) first: only those can be downloaded "
                               "or published from here.")
        return category
