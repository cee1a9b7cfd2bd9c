"""The Swagger UI in a real headless Chromium: every operation is listed, and an upload through
"Try it out" works from the page's own file input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e
# Debian's package (.ci/run installs it); Playwright drives it, it never downloads a browser.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
def page():
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_swagger_ui_lists_every_operation_and_uploads_a_file(page, embedded_server, tmp_path: Path):
    spec = yaml.safe_load((ROOT / "api.yaml").read_text())
    expected = {
        (method.upper(), path) for path, item in spec["paths"].items() for method in item if method in METHODS
    }
    with embedded_server(tmp_path / "data") as url:
        page.goto(f"{url}/kmeans/ui/")
        page.wait_for_selector(".opblock", timeout=30_000)
        listed = {
            (block.locator(".opblock-summary-method").inner_text().strip(),
             block.locator(".opblock-summary-path").get_attribute("data-path"))
            for block in page.locator(".opblock").all()
        }
        assert listed == expected

        upload = page.locator("#operations-classic-upload")
        upload.locator(".opblock-summary").click()
        upload.locator("button.try-out__btn").click()
        upload.locator("input[type=file]").set_input_files(str(ROOT / "examples" / "model.csv"))
        upload.locator("button.execute").click()
        status = upload.locator(".live-responses-table .response .response-col_status").first
        status.wait_for(timeout=30_000)
        assert status.inner_text().strip() == "200"
        body = upload.locator(".live-responses-table .response-col_description pre").first.inner_text()
        result = json.loads(body)
        assert result["job_id"] == 0 and result["filename"] == "model.csv" and result["rows"] == 6
