"""End to end in a real browser: Playwright drives Debian's Chromium against the app on localhost.

It uploads a part, runs Inspect and the default explanations, checks that the verdict and the captioned panels
appear, repeats the inspection at phone width (no sideways scrolling) and inside an iframe, and saves
screenshots to out/screenshots/ (app.png, app-phone.png, app-iframe.png; ignored by git).
"""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from synthetic import add_defect, texture

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="Debian's chromium is not installed (apt-get install chromium)")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_upload_inspect_explain_and_screenshot(classifier_bundle, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from app import build_app
    from xai.service import Catalogue

    rng = np.random.default_rng(8)
    part = tmp_path / "part.png"
    Image.fromarray(add_defect(texture(rng), rng, "blob")[0]).save(part)
    demo = build_app(Catalogue.from_sources(str(classifier_bundle)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    shots = ROOT / "out" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
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
            phone.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            phone.locator("input[type=file]").first.set_input_files(str(part))
            phone.get_by_role("button", name="Inspect", exact=True).click()
            expect(phone.get_by_text("DEFECT: blob")).to_be_visible(timeout=60_000)
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            phone.screenshot(path=str(shots / "app-phone.png"), full_page=True)

            # embedded in another page as an iframe
            host = browser.new_page(viewport={"width": 1000, "height": 900})
            host.set_content(f'<h1>Line 3 inspection</h1><iframe src="http://127.0.0.1:{port}/" '
                             'width="960" height="800" style="border:0"></iframe>')
            frame = host.frame_locator("iframe")
            frame.locator("input[type=file]").first.set_input_files(str(part))
            frame.get_by_role("button", name="Inspect", exact=True).click()
            expect(frame.get_by_text("DEFECT: blob")).to_be_visible(timeout=60_000)
            host.screenshot(path=str(shots / "app-iframe.png"))
            browser.close()
    finally:
        demo.close()
    assert (shots / "app.png").stat().st_size > 10_000
