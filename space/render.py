"""Pictures for people: heatmap overlays with a defect contour, at the uploaded image's own size."""

from __future__ import annotations

from PIL import Image

from xai.errors import redact
from xai.score_model import FAITHFUL_R2


def evidence(exp, picture: Image.Image, bundle_dir=None) -> list[tuple[Image.Image, str]]:
    """Supporting pictures of one explanation, each with a caption: SHAP's own plot; for the retrieval trace
    the upload with its most anomalous patch boxed, then the nearest good images and nearest good patches."""
    import io

    extras = exp.extras
    out: list[tuple[Image.Image, str]] = []
    if "plot_png" in extras:
        out.append((Image.open(io.BytesIO(extras["plot_png"])).convert("RGB"),
                    extras.get("plot_caption", "SHAP values (shap.image_plot)")))
    if "anomalous_patch" in extras:
        patch = extras["anomalous_patch"]
        out.append((_boxed(picture, patch["box"], extras["input_shape"]),
                    f"most anomalous patch: distance {patch['distance']:.2f} to the nearest good patch"))
        for near in extras["nearest_images"]:
            with Image.open(_in(bundle_dir, near["thumbnail"]), formats=["JPEG"]) as thumb:
                caption = f"nearest good image {near['name']} (cosine {near['similarity']:.3f})"
                out.append((thumb.convert("RGB"), caption))
        for near in extras["nearest_patches"]:
            with Image.open(_in(bundle_dir, near["thumbnail"]), formats=["JPEG"]) as thumb:
                # thumbnails are stored at their picture's model shape: boxes are in their own pixels
                out.append((_boxed(thumb.convert("RGB"), near["box"], (thumb.height, thumb.width)),
                            f"nearest good patch in {near['name']} (distance {near['distance']:.2f})"))
    return out


def _in(bundle_dir, name: str):
    """A retrieval thumbnail's file: JSON names it relative to its bundle."""
    from pathlib import Path

    return Path(bundle_dir) / name if bundle_dir is not None else Path(name)


def _boxed(picture: Image.Image, box: list[int], shape: tuple[int, int]) -> Image.Image:
    """`picture` with a cyan rectangle at `box`, given in the pixels of its model input of `shape` (h, w)."""
    from PIL import ImageDraw

    sx, sy = picture.width / shape[1], picture.height / shape[0]
    x0, y0, x1, y1 = box
    out = picture.convert("RGB")  # a copy
    ImageDraw.Draw(out).rectangle([x0 * sx, y0 * sy, min(x1 * sx, picture.width - 1), min(y1 * sy, picture.height - 1)],
                                  outline=(0, 255, 255), width=max(2, round(min(picture.size) / 120)))
    return out


def verdict_markdown(verdict: dict) -> str:
    """The /detect JSON as a headline a person reads first, then every component's score against its threshold."""
    mark = "DEFECT" if verdict["is_defect"] else "GOOD"
    lines = [f"### {mark}: {verdict['label']}",
             f"score **{verdict['score']:.3f}** against threshold {verdict['threshold']:.3f} "
             f"(decided by `{verdict['decided_by']}`) · {verdict['timings_ms']['total']:.0f} ms", "",
             "| component | score | threshold | says |", "|---|---|---|---|"]
    for name, score in verdict["scores"].items():
        threshold = verdict["thresholds"].get(name)
        says = "—" if threshold is None else ("defect" if score > threshold else "good")
        lines.append(f"| {name} | {score:.3f} | {'' if threshold is None else f'{threshold:.3f}'} | {says} |")
    return "\n".join(lines)


def feedback_markdown(answer: dict) -> str:
    """What a review did, in a line or two (the /feedback JSON)."""
    copied = (f" You now have your own copy of {answer['copied_from']}, **{answer['name']}**, chosen above; "
              "the served category is unchanged." if answer.get("copied_from") else "")
    if answer["verdict"] == "defect":
        return (f"Kept as a reviewed defect (score {answer['score_before']:.3f}, threshold "
                f"{answer['threshold']:.3f}).{copied}")
    now = "defect" if answer["is_defect_after"] else "good"
    return (f"Learned as good: score {answer['score_before']:.3f} → **{answer['score_after']:.3f}** (threshold "
            f"{answer['threshold']:.3f}: now {now}); {answer['rows_added']} of its patches joined the bank "
            f"({answer['bank_size']:,} in all). Undo it below.{copied}")


def reviews_markdown(sensitivity: dict | None, n_reviews: int) -> str:
    """The category's operating point and its reviews, for the review list."""
    if not sensitivity:
        return "This category has no anomaly detector to teach."
    defects = sensitivity["reviewed_defects"]
    lines = [f"**Sensitivity:** {sensitivity['in_words']} (threshold {sensitivity['threshold']:.4f}, "
             + ("as fitted" if sensitivity["set_by"] == "fit" else "set here") + f"; modelled on "
             f"{sensitivity['good_scores']} good pictures the bank had not seen). **Reviews:** {n_reviews}."]
    if defects:
        lines.append(f"**Reviewed defects:** {defects}, of which {sensitivity['reviewed_defects_flagged']} "
                     "score above the current threshold.")
    return " ".join(lines)


def explanations_markdown(payloads: dict, captions: dict) -> str:
    """One row per explanation: the method, what it answers and how long it took."""
    lines = ["| method | what it answers | ms |", "|---|---|---|"]
    lines += [f"| {name} | {captions.get(name, '')} | {p['ms']:.0f} |" for name, p in payloads.items()]
    return "\n".join(lines)


def part_card_markdown(fitted: dict) -> str:
    """The report card of a category made from a visitor's pictures (/fit's JSON) as Markdown."""
    card = fitted.get("report", {})

    def pct(value) -> str:
        return "not measurable" if value is None else f"{value:.0%}"

    alarms, synthetic = card.get("false_alarms", {}), card.get("synthetic_anomalies", {})
    real = card.get("real_defects")
    lines = [f"### {fitted.get('name', '')}: ready — id `{fitted.get('category', '')}`",
             f"Fitted on {fitted.get('n_images')} good pictures in {fitted.get('seconds', 0):.1f} s; threshold "
             f"{fitted.get('threshold', 0):.4f} ({card.get('threshold_rule', '')}).",
             "" if not fitted.get("expires_at") else
             f"Kept until {fitted['expires_at']} (UTC); download it to keep it.",
             "",
             "| what was measured, on the pictures you gave | result |", "|---|---|",
             f"| false alarms on good pictures the memory bank never saw | {pct(alarms.get('unseen_good_pictures'))} |",
             f"| synthetic anomalies detected ({synthetic.get('n')}, exact masks) | "
             f"{pct(synthetic.get('detection_rate'))} |",
             f"| ... anomaly map's peak on the anomaly (pointing game) | {pct(synthetic.get('pointing_game'))} |",
             f"| ... anomaly map vs mask (heatmap AUROC) | {synthetic.get('heatmap_auroc') or '—'} |"]
    if real:
        lines.append(f"| your defective pictures detected ({real.get('n')}) | {pct(real.get('detection_rate'))} |")
    scored = card.get("score_model_fidelity") or {}
    lines.append("| the score's small model for `shap_features`: R² on pictures it was not fitted on | "
                 + (f"{scored['r2']:.2f}" + (" (low: its chart says so)" if scored["r2"] < FAITHFUL_R2 else "")
                    if scored.get("r2") is not None else "not fitted (too few pictures)") + " |")
    if card.get("warning"):
        lines += ["", f"**Caution:** {card['warning']}"]
    lines += ["", "Synthetic anomalies are easier than most real defects: treat their figures as an upper bound."]
    if fitted.get("train_estimate_s"):
        lines.append(f"Training the explainable classifier on these pictures should take about "
                     f"{fitted['train_estimate_s']:.0f} s.")
    return "\n".join(lines)


def build_markdown(build) -> str:
    """The status of the default categories being built here (training.defaults.BackgroundBuild), for the page."""
    ready = ", ".join(f"**{name} (built here)**" for name in build.ready)
    if build.done and not build.failed:
        return f"{ready} ready: built on this machine with the project's own training code."
    head = ("This app builds its default categories on this machine with its own training code (a few minutes "
            "each; the published bundles are not configured or could not be fetched). ")
    if ready:
        head += f"Ready: {ready}. "
    if build.failed:
        return head + f"**A build failed** ({redact(build.failed.splitlines()[0])}; see the server log); the rest "\
                      "of the app works."
    return head + f"**Now: {build.status}.** Each appears in the category list when ready, named *(built here)*."
