"""End to end in a real browser: Playwright drives Debian's Chromium against the app on localhost.

It uploads a part, runs Inspect and the default explanations, checks that the verdict and the captioned panels
appear, repeats the inspection at phone width (no sideways scrolling) and inside an iframe, and saves
screenshots to out/screenshots/ (app.png, app-phone.png, app-iframe.png, app-batch.png, batch-report.png;
ignored by git).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from synthetic import add_defect, texture

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="Debian's chromium is not installed (apt-get install chromium)")]
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def served(serve, bundle) -> Iterator[tuple[str, Path]]:
    """The app over `bundle` on a free port, served as in production: (its URL, the screenshot folder)."""
    from space.catalogue import Catalogue

    shots = ROOT / "out" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with serve(Catalogue.from_sources(str(bundle))) as (url, _):
        yield url, shots


def blob_part(path: Path, rng: np.random.Generator) -> Path:
    """A generated defective part (a blob on the woven texture) saved at `path`."""
    Image.fromarray(add_defect(texture(rng), rng, "blob")[0]).save(path)
    return path


def test_upload_inspect_explain_and_screenshot(classifier_bundle, tmp_path, serve):
    from playwright.sync_api import expect, sync_playwright

    part = blob_part(tmp_path / "part.png", np.random.default_rng(8))
    with served(serve, classifier_bundle) as (url, shots):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"{url}/", wait_until="load")  # heartbeat: never idle
            page.locator("input[type=file]").first.set_input_files(str(part))
            page.get_by_role("button", name="Inspect", exact=True).click()
            expect(page.get_by_text("DEFECT: blob")).to_be_visible(timeout=60_000)  # the verdict headline first
            expect(page.get_by_role("cell", name="classifier_cnn").first).to_be_visible()  # per-component scores
            page.get_by_role("button", name="Explain", exact=True).click()
            expect(page.get_by_text("gradcam · ").first).to_be_visible(timeout=120_000)  # a captioned panel
            expect(page.get_by_role("cell", name="Regions whose features drive the CNN's defect score",
                                    exact=False).first).to_be_visible()
            page.screenshot(path=str(shots / "app.png"), full_page=True)

            # phone width: nothing wider than the screen, and the same flow works
            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
            phone.goto(f"{url}/", wait_until="load")  # heartbeat: never idle
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            phone.locator("input[type=file]").first.set_input_files(str(part))
            phone.get_by_role("button", name="Inspect", exact=True).click()
            expect(phone.get_by_text("DEFECT: blob")).to_be_visible(timeout=60_000)
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            phone.screenshot(path=str(shots / "app-phone.png"), full_page=True)

            # embedded in another page as an iframe
            host = browser.new_page(viewport={"width": 1000, "height": 900})
            host.set_content(f'<h1>Line 3 inspection</h1><iframe src="{url}/" '
                             'width="960" height="800" style="border:0"></iframe>')
            frame = host.frame_locator("iframe")
            frame.locator("input[type=file]").first.set_input_files(str(part))
            frame.get_by_role("button", name="Inspect", exact=True).click()
            expect(frame.get_by_text("DEFECT: blob")).to_be_visible(timeout=60_000)
            host.screenshot(path=str(shots / "app-iframe.png"))
            browser.close()
    assert (shots / "app.png").stat().st_size > 10_000


def test_add_a_category_inspect_it_and_download_it(classifier_bundle, tmp_path, serve):
    """A visitor teaches the app a new part from generated pictures on the page, inspects a defective one with it,
    and downloads the category; the zip loads as a bundle."""
    import zipfile

    import httpx
    from playwright.sync_api import expect, sync_playwright

    from xai.bundle import load

    rng = np.random.default_rng(21)
    good = []
    for i in range(4):
        good.append(tmp_path / f"good_{i}.png")
        Image.fromarray(texture(rng)).save(good[-1])
    part = blob_part(tmp_path / "scratched.png", rng)
    with served(serve, classifier_bundle) as (url, shots):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"{url}/", wait_until="load")  # heartbeat: never idle
            page.get_by_text("Add your part", exact=False).first.click()
            page.get_by_label("Name of the part").fill("woven strap")
            page.locator("input[type=file]").nth(1).set_input_files([str(p) for p in good])
            page.get_by_role("button", name="Fit", exact=True).click()
            expect(page.get_by_text("woven strap: ready").first).to_be_visible(timeout=120_000)
            expect(page.get_by_role("cell", name="synthetic anomalies detected", exact=False)).to_be_visible()
            page.locator("input[type=file]").first.set_input_files(str(part))
            page.get_by_role("button", name="Inspect", exact=True).click()
            expect(page.get_by_text("DEFECT").first).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="Download the category (bundle zip)").click()
            link = page.locator("a[href*='gradio_api/file='][href$='.zip']").first
            expect(link).to_be_visible(timeout=30_000)
            page.screenshot(path=str(shots / "app-new-part.png"), full_page=True)
            href = link.get_attribute("href")
            browser.close()
        archive = tmp_path / "download.zip"
        archive.write_bytes(httpx.get(href if href.startswith("http") else f"{url}{href}").content)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp_path / "unzipped")
        bundle = load(tmp_path / "unzipped")
        assert bundle.category == "woven strap" and bundle.components() == ["patchcore"]
        assert (tmp_path / "unzipped" / "README.md").is_file()


def test_the_batch_tab_and_the_batch_report(classifier_bundle, tmp_path, serve):
    """The Batch tab inspects several pictures at once (table, CSV, gallery), and `training.inspect`'s report.html
    opens in the browser with its histogram and overlays; screenshots app-batch.png and batch-report.png."""
    from playwright.sync_api import expect, sync_playwright

    from training import inspect as inspect_cli

    rng = np.random.default_rng(33)
    folder = tmp_path / "day"
    (folder / "good").mkdir(parents=True)
    (folder / "blob").mkdir()
    for i in range(3):
        Image.fromarray(texture(rng)).save(folder / "good" / f"ok_{i}.png")
        blob_part(folder / "blob" / f"bad_{i}.png", rng)
    pictures = sorted(folder.rglob("*.png"))
    assert inspect_cli.main(["--bundle", str(classifier_bundle), "--input", str(folder), "--out",
                             str(tmp_path / "out"), "--top", "4"]) == 0
    with served(serve, classifier_bundle) as (url, shots):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(f"{url}/", wait_until="load")
            page.get_by_role("tab", name="Batch").click()
            expect(page.get_by_role("button", name="Inspect all", exact=True)).to_be_visible()
            page.locator("input[type=file][multiple]").last.set_input_files([str(p) for p in pictures])  # Batch tab
            page.get_by_role("button", name="Inspect all", exact=True).click()
            expect(page.get_by_text("6 pictures: 3 defective, 3 good").first).to_be_visible(timeout=120_000)
            expect(page.get_by_role("cell", name="bad_0.png").first).to_be_visible()
            page.screenshot(path=str(shots / "app-batch.png"), full_page=True)
            report = browser.new_page(viewport={"width": 1280, "height": 1400})
            report.goto((tmp_path / "out" / "report.html").as_uri(), wait_until="load")
            expect(report.get_by_text("6 pictures:", exact=False)).to_be_visible()
            expect(report.get_by_role("img", name="score histogram")).to_be_visible()
            assert report.locator("figure img").count() == 4
            report.screenshot(path=str(shots / "batch-report.png"), full_page=True)
            browser.close()
    assert (shots / "batch-report.png").stat().st_size > 10_000


def test_a_false_alarm_marked_good_changes_the_verdict(texture_bundle, tmp_path, serve):
    """The engineer's loop in the page: a good part the detector flags, one click on "This is good", and the same
    picture's verdict turns good (on the visitor's own copy of the served category); screenshot app-feedback.png."""
    from playwright.sync_api import expect, sync_playwright

    served_copy = tmp_path / "weave"
    shutil.copytree(texture_bundle, served_copy)
    picture = texture(np.random.default_rng(9)).astype(np.float32) * 1.3 + 20  # brighter light: a false alarm
    part = tmp_path / "bright.png"
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(part)
    with served(serve, served_copy) as (url, shots):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"{url}/", wait_until="load")
            page.locator("input[type=file]").first.set_input_files(str(part))
            page.get_by_role("button", name="Inspect", exact=True).click()
            expect(page.get_by_text("DEFECT: defect")).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="This is good", exact=True).click()
            expect(page.get_by_text("Learned as good")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("GOOD: good")).to_be_visible(timeout=30_000)
            page.screenshot(path=str(shots / "app-feedback.png"), full_page=True)
            browser.close()
