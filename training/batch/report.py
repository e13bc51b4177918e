"""report.html of a batch inspection: counts, the score histogram against the threshold, a review queue (the
pictures nearest the threshold first), the most anomalous pictures with their overlays, the pictures that could not
be read, and, when the folder's layout named classes, the metrics `evaluate` computes. One self-contained file
(pictures inlined), every text escaped."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from training.batch.sources import read_picture
from xai.bundle_meta import BundleMeta
from xai.metrics import auroc, binary_report, f1_max

THUMB = 360  # px, the longer side of an overlay in the report
QUEUE = 20  # pictures the review queue lists


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def histogram(table, threshold: float | None) -> str:
    """The scores as a histogram (by ground truth when there is one) with the threshold: a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    scores = table["score"].dropna().to_numpy(dtype=float)
    figure = Figure(figsize=(7, 2.8))
    axes = figure.subplots()
    bins = np.histogram_bin_edges(scores, bins=40) if len(scores) else 10
    if "truth_is_defect" in table and table["truth_is_defect"].notna().any():
        for value, name, colour in ((False, "good (ground truth)", "#3a7"), (True, "defective (ground truth)", "#d43")):
            chosen = table.loc[table["truth_is_defect"].fillna(not value) == value, "score"].dropna()
            axes.hist(chosen.to_numpy(dtype=float), bins=bins, alpha=0.6, label=name, color=colour)
    else:
        axes.hist(scores, bins=bins, color="#467")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    axes.set_xlabel("score")
    axes.set_ylabel("pictures")
    axes.legend(loc="upper right", fontsize=8)
    return _png(figure)


def metrics(table, threshold: float) -> dict | None:
    """evaluate's image-level figures on the rows with a ground truth: image AUROC, F1 and accuracy at the stored
    threshold, F1 at the best threshold, and image AUROC per defect type against all good pictures."""
    rows = table[table["truth_is_defect"].notna() & table["score"].notna()] if "truth_is_defect" in table else []
    if len(rows) == 0:
        return None
    labels = rows["truth_is_defect"].to_numpy(dtype=bool)
    scores = rows["score"].to_numpy(dtype=float)
    report = {**binary_report(labels, scores, threshold), "f1_max": f1_max(labels, scores), "n": len(rows)}
    report["per_type"] = {}
    for kind in sorted(set(rows.loc[rows["truth_is_defect"], "truth"])):
        mine = (rows["truth"] == kind).to_numpy()
        chosen = mine | ~labels
        report["per_type"][kind] = {"n": int(mine.sum()), "image_auroc": auroc(mine[chosen], scores[chosen])}
    return report


def review_queue(table, n: int = QUEUE):
    """The `n` readable pictures nearest their threshold, nearest first (smallest |score - threshold| / threshold,
    ties in the table's order), with that signed distance as `margin`: the verdicts a small change would flip,
    where an engineer's review settles most (and, reviewed, teaches the detector most)."""
    rows = table[table["score"].notna() & table["threshold"].notna() & (table["threshold"] > 0)]
    margin = ((rows["score"] - rows["threshold"]) / rows["threshold"]).to_numpy(dtype=float)
    order = np.argsort(np.abs(margin), kind="stable")[:max(n, 0)]
    return rows.iloc[order].assign(margin=margin[order])


def overlays(table, bundle: str, top: int) -> list[tuple[dict, str]]:
    """The `top` highest-scoring readable pictures, each with its overlay as the app draws it (base64 JPEG)."""
    from xai.inspector import Inspector
    from xai.render import verdict_overlay

    best = table[table["score"].notna()].sort_values("score", ascending=False).head(top)
    if not len(best):
        return []
    inspector = Inspector.from_source(bundle)
    out = []
    for row in best.to_dict("records"):
        picture = read_picture(row["path"])
        found = inspector.detect(picture)
        shown = picture if found.anomaly_map is None else verdict_overlay(
            picture, found.anomaly_map, found.thresholds["patchcore"], found.scores["patchcore"])
        shown.thumbnail((THUMB, THUMB))
        buffer = io.BytesIO()
        shown.convert("RGB").save(buffer, "JPEG", quality=85)
        out.append((row, base64.b64encode(buffer.getvalue()).decode()))
    return out


def _fmt(value) -> str:
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def taught(meta: BundleMeta) -> str:
    """What reviews have taught the bundle's detector, in a sentence (empty when nothing)."""
    stored = None if meta.patchcore is None else meta.patchcore.reviews
    if not isinstance(stored, dict):
        return ""
    verdicts = [e.get("verdict") for e in stored.get("entries", []) if isinstance(e, dict)]
    share = stored.get("sensitivity")
    said = [f"learned from {len(verdicts)} reviewed pictures ({verdicts.count('good')} good, "
            f"{verdicts.count('defect')} defective)"] if verdicts else []
    if isinstance(share, (int, float)):
        from xai.reviews import in_words

        said.append(f"a sensitivity set by a user ({in_words(share)})")
    return f" Its detector has {' and '.join(said)}." if said else ""


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
         "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.grid{display:flex;"
         "flex-wrap:wrap;gap:12px}figure{margin:0;width:360px}figure img{max-width:100%}"
         "figcaption{font-size:12px;word-break:break-all}img{max-width:100%}")


def write_report(out: Path, table, bundle: str, meta: BundleMeta, top: int = 12, run: dict | None = None,
                 queue: int | None = None) -> Path:
    """Write OUTDIR/report.html for the results `table` (a DataFrame) of `bundle`, its review queue `queue`
    pictures long (default QUEUE; 0: none); returns its path."""
    errors = table[table["error"].fillna("") != ""]
    readable = table[table["error"].fillna("") == ""]
    threshold = float(readable["threshold"].iloc[0]) if len(readable) else None
    parts = [_summary(table, readable, errors, bundle, meta, run or {})]
    if len(readable):
        parts.append(f'<h2>Scores</h2><img alt="score histogram" src="data:image/png;base64,'
                     f'{histogram(readable, threshold)}">')
    parts += [_against_truth(readable, threshold), _queue(readable, bundle, QUEUE if queue is None else queue),
              _most_anomalous(readable, bundle, top), _unreadable(errors)]
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>defect-xai report</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>")
    path = Path(out) / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _summary(table, readable, errors, bundle: str, meta: BundleMeta, run: dict) -> str:
    """The heading and the counts, and what this run did."""
    e = html.escape
    defects = int(readable["is_defect"].fillna(False).sum())
    rate = run.get("inspected", 0) / run["seconds"] if run.get("seconds") else None
    return "".join([
        f"<h1>defect-xai batch inspection: {e(meta.category or 'bundle')}</h1>",
        f"<p>Bundle <code>{e(str(bundle))}</code>.{e(taught(meta))} {len(table)} pictures: "
        f"<b>{defects} defective</b>, {len(readable) - defects} good, {len(errors)} could not be read.",
        (f" This run inspected {run.get('inspected', 0)} ({run.get('resumed', 0)} were already in the results) "
         f"with the {e(str(run.get('engine')))} engine in {run.get('seconds', 0):.1f} s"
         + (f" ({rate:.1f} pictures/s)." if rate else ".")) if run else "", "</p>"])


def _against_truth(readable, threshold: float | None) -> str:
    """The figures against the folder's ground truth, overall and per defect type ("" without truth)."""
    report = metrics(readable, threshold) if threshold is not None else None
    if not report:
        return ""
    out = (f"<h2>Against the folder's ground truth ({report['n']} pictures)</h2><table><tr>"
           + "".join(f"<th>{k}</th>" for k in ("image AUROC", "F1", "accuracy", "F1 max"))
           + "</tr><tr>" + "".join(f"<td>{_fmt(report[k])}</td>" for k in
                                   ("image_auroc", "f1", "accuracy", "f1_max")) + "</tr></table>")
    if report["per_type"]:
        out += ("<table><tr><th>defect type</th><th>pictures</th><th>image AUROC</th></tr>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v['n']}</td><td>{_fmt(v['image_auroc'])}</td></tr>"
            for k, v in report["per_type"].items()) + "</table>")
    return out


def _queue(readable, bundle: str, length: int) -> str:
    """The review queue: the `length` verdicts nearest the threshold, and how to teach the detector."""
    e = html.escape
    nearest = review_queue(readable, length)
    if not len(nearest):
        return ""
    truth = "truth" in nearest and nearest["truth"].notna().any()
    return (
        f"<h2>Review queue: the {len(nearest)} nearest the threshold</h2><p>The verdicts a small change would "
        "flip, nearest first: the pictures to look at first. Teach the detector what you find with "
        f"<code>python -m training.inspect --bundle {e(str(bundle))} --feedback FILE.csv</code> (a header "
        "<code>path,verdict</code>, then one picture a line, <code>good</code> or <code>defect</code>).</p>"
        "<table class='queue'><tr><th>picture</th><th>score</th><th>threshold</th><th>from the threshold</th>"
        "<th>verdict</th>" + ("<th>truth</th>" if truth else "") + "</tr>" + "".join(
            f"<tr><td>{e(str(r['path']))}</td><td>{r['score']:.4g}</td><td>{r['threshold']:.4g}</td>"
            f"<td>{r['margin']:+.1%}</td><td>{_fmt(r['label'])}</td>"
            + (f"<td>{_fmt(r['truth'])}</td>" if truth else "") + "</tr>"
            for r in nearest.to_dict("records")) + "</table>")


def _most_anomalous(readable, bundle: str, top: int) -> str:
    """The `top` highest scores' overlays ("" when none)."""
    shown = overlays(readable, bundle, top)
    if not shown:
        return ""
    return (f"<h2>The {len(shown)} most anomalous</h2><div class='grid'>" + "".join(
        f"<figure><img alt='overlay' src='data:image/jpeg;base64,{b64}'><figcaption>{html.escape(row['path'])}"
        f"<br>{_fmt(row['label'])} · score {row['score']:.4g} (threshold {row['threshold']:.4g})</figcaption>"
        "</figure>" for row, b64 in shown) + "</div>")


def _unreadable(errors) -> str:
    """The pictures that could not be read, and why ("" when none)."""
    if not len(errors):
        return ""
    return ("<h2>Could not be read</h2><table><tr><th>picture</th><th>why</th></tr>" + "".join(
        f"<tr><td>{html.escape(str(r['path']))}</td><td>{html.escape(str(r['error']))}</td></tr>"
        for r in errors.to_dict("records")) + "</table>")
