"""Model card (bundle README.md with Hugging Face YAML front matter), regenerated from bundle.json."""

from __future__ import annotations

import html
import json
from pathlib import Path

from xai.bundle import read_bundle_meta
from xai.bundle_meta import BundleMeta, PatchCoreMeta


def card_data(meta: BundleMeta):
    """The card's metadata (the Hub's YAML front matter) through huggingface_hub's own ModelCardData."""
    from huggingface_hub import ModelCardData

    data = meta.data or {}
    metrics = meta.metrics or {}
    names = sorted({k for comp in metrics.values() if isinstance(comp, dict) for k in comp
                    if k in ("image_auroc", "pixel_auroc", "aupro", "f1", "accuracy")})
    return ModelCardData(license=data.get("license") or "other", library_name="defect-xai",
                         tags=["anomaly-detection", "visual-inspection", "explainable-ai", "patchcore",
                               "image-classification"],
                         datasets=[data["name"]] if data.get("name") else None, metrics=names or None)


def choice_lines(patchcore: PatchCoreMeta | None) -> list[str]:
    """The card's section on how the fit chose the detector's view and smoothing (training.choice)."""
    choice = None if patchcore is None else patchcore.choice
    if not isinstance(choice, dict):
        return []
    lines = ["", "## How the detector's settings were chosen", ""]
    if "chosen" not in choice:
        return lines + [f"Not chosen: {html.escape(str(choice.get('skipped', '')))}; the defaults were kept."]
    chosen = choice["chosen"]
    rule = html.escape(str(choice.get("rule", "")))
    lines += [f"Rule: {rule}. Evidence: {choice.get('n_good', '?')} held-out good pictures and "
              f"{choice.get('n_anomalies', '?')} synthetic anomalies made from them, against a bank of "
              f"{choice.get('n_bank_pictures', '?')} good pictures ({choice.get('seconds', '?')} s).", "",
              "| view (shorter side) | pictures | model shape | smoothing (px) | separation | AUROC | chosen |",
              "|---|---|---|---|---|---|---|"]
    for c in choice.get("candidates", []):
        mark = "**yes**" if all(c.get(k) == v for k, v in chosen.items()) else ""
        cells = [c.get("short_side"), "enlarged" if c.get("enlarge") else "own pixels", c.get("shape"), c.get("sigma"),
                 c.get("separation"), c.get("auroc")]  # a stranger's bundle.json: text, never markup
        lines.append("| " + " | ".join(html.escape(str(cell)) for cell in cells) + f" | {mark} |")
    return lines


def render_card(meta: BundleMeta | dict) -> str:
    """Markdown card: what the bundle is, its data and licence, its threshold rule and its measured metrics
    (`meta` typed, or a bundle.json's raw keys)."""
    meta = meta if isinstance(meta, BundleMeta) else BundleMeta.from_json(meta)
    category = html.escape(str("?" if meta.category is None else meta.category))  # a visitor's name: text, not markup
    comps = meta.components
    data = meta.data or {}
    detector = meta.patchcore
    parts = ["---", card_data(meta).to_yaml(), "---", "", f"# defect-xai bundle: {category}", "",
             "Models for the defect-xai explainable visual inspection app: a PatchCore-style anomaly detector "
             f"on a frozen ImageNet {(meta.trunk and meta.trunk.name) or ''} trunk"
             + (" and classification heads" if len(comps) > 1 else "") + ".", "",
             "## Components", ""]
    for name, comp in comps.items():
        fit = (comp.fit if isinstance(comp, PatchCoreMeta) else None) or {}
        threshold = float("nan") if comp.threshold is None else comp.threshold
        parts.append(f"- **{name}**: threshold {threshold:.4f} "
                     f"({comp.threshold_rule or ''}); fitted on {fit.get('n_images', '?')} images, "
                     f"memory bank {fit.get('bank_size', '?')} patches.")
    parts += choice_lines(detector)
    cal = (detector and detector.calibration) or {}
    if "synthetic" in cal:
        syn = cal["synthetic"]
        parts += ["", "## How the threshold was chosen", "",
                  f"Rule: {detector.threshold_rule or ''}. Evidence, on pictures the memory bank never "
                  "saw (every score is in bundle.json):", "",
                  f"- {cal.get('n_images', '?')} held-out good pictures: {cal.get('false_alarm_rate', 0):.1%} "
                  "above the threshold (false alarms)",
                  f"- {cal.get('n_synthetic', '?')} synthetic anomalies made from them: "
                  f"{syn.get('detection_rate') or 0:.1%} detected; the anomaly map's maximum on the anomaly in "
                  f"{syn.get('pointing_game') or 0:.1%} of them"]
        if "real" in cal:
            parts.append(f"- {cal.get('n_real_defects', '?')} real defective pictures: "
                         f"{cal['real'].get('detection_rate') or 0:.1%} detected")
    parts += ["", "## Training data", "",
              f"- layout `{data.get('layout', '?')}`, dataset `{data.get('name', '?')}`, licence "
              f"`{data.get('license') or 'unknown'}`" + (f"; cite: {data['citation']}" if data.get("citation") else ""),
              ""]
    if meta.metrics:
        parts += ["## Evaluation (`python -m training.evaluate`)", "", "```json",
                  json.dumps(meta.metrics, indent=2), "```", ""]
    parts += ["## Use", "", "```python", "from xai.inspector import Inspector",
              "inspector = Inspector.from_source('PATH_OR_REPO_ID')", "print(inspector.detect('part.png').to_json())",
              "```", ""]
    return "\n".join(parts)


def write_card(folder: Path) -> None:
    """The bundle's README.md, as huggingface_hub writes a model card."""
    from huggingface_hub import ModelCard

    ModelCard(render_card(read_bundle_meta(Path(folder)))).save(Path(folder) / "README.md")
