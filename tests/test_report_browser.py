"""The report renders in headless Chromium: every figure decodes and has a size, and a screenshot is taken.

Uses Playwright driving the system Chromium (`/usr/bin/chromium`, Debian's package; `.ci/run`
installs it); skips cleanly where either is missing."""

from __future__ import annotations

import shutil

import pytest

from tests.test_report import fake_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_report_renders_with_all_images_loaded(tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    from pipelines.report import run_report

    monkeypatch.chdir(tmp_path)
    abl = fake_study(tmp_path)
    run_report(abl, metrics_dir=tmp_path / "metrics", screen_dir=tmp_path / "screen", out_dir=tmp_path / "reports",
               summary_metrics=tmp_path / "ablation.json", data_dir=tmp_path / "none")
    page_path = tmp_path / "reports" / "index.html"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(images) >= 4
    assert all(done and w > 50 and h > 50 for done, w, h in images), images
    assert (tmp_path / "report.png").stat().st_size > 20_000
