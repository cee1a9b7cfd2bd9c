"""The Swagger UI in a real headless Chromium: every operation is listed, an upload through
"Try it out" works from the page's own file input, and on a server that requires tokens the
"Authorize" button (api.yaml's bearerAuth scheme, or its userAuth password sign-in) is what turns a
401 into a 200."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import ROOT, free_port, running
from tests.e2e.test_auth_e2e import create_token

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


def test_swagger_ui_authorize_button_sends_the_bearer_token(page, tmp_path: Path):
    expect = pytest.importorskip("playwright.sync_api").expect
    data_dir = tmp_path / "data"
    token = create_token(data_dir, "--role", "admin")
    port = free_port()
    cmd = [sys.executable, "server.py", "--port", str(port), "--data-dir", str(data_dir)]
    with running(cmd, data_dir, port, tmp_path / "server.log", env={"KMEANS_AUTH": "required"}) as url:
        page.set_default_timeout(30_000)
        page.goto(f"{url}/kmeans/ui/")
        page.wait_for_selector(".opblock")
        whoami = page.locator("#operations-access-whoami")
        whoami.locator(".opblock-summary").click()
        whoami.locator("button.try-out__btn").click()

        # Not authorized yet: the server refuses, and the page shows its problem.
        whoami.locator("button.execute").click()
        status = whoami.locator(".live-responses-table .response .response-col_status").first
        expect(status).to_have_text("401", timeout=30_000)
        problem = json.loads(whoami.locator(".live-responses-table .response-col_description pre").first.inner_text())
        assert problem["status"] == 401
        assert "Authorization: Bearer" not in whoami.locator(".curl-command").inner_text()

        # The bearerAuth dialog from api.yaml's securitySchemes.
        page.locator(".auth-wrapper button.authorize").click()
        dialog = page.locator(".modal-ux")
        dialog.wait_for()
        scheme = dialog.locator(".auth-container").filter(has_text="bearerAuth")
        scheme.locator("input[aria-label=auth-bearer-value]").fill(token)
        scheme.locator("button.authorize[type=submit]").click()
        expect(scheme.locator("button", has_text="Logout")).to_be_visible(timeout=10_000)
        expect(scheme).to_contain_text("Authorized")
        scheme.locator("button.btn-done").click()
        dialog.wait_for(state="detached")
        page.locator(".auth-wrapper button.authorize.locked").wait_for()

        # The same call again: now with the token, and the server knows who it is.
        whoami.locator("button.execute").click()
        expect(status).to_have_text("200", timeout=30_000)
        me = json.loads(whoami.locator(".live-responses-table .response-col_description pre").first.inner_text())
        assert me["role"] == "admin" and me["open"] is False and me["token_id"]
        assert f"Authorization: Bearer {token}" in whoami.locator(".curl-command").inner_text()


def test_swagger_ui_signs_in_with_a_user_name_and_password(page, tmp_path: Path):
    """The Authorize dialog's userAuth scheme (OAuth2 password grant at /auth/token): a user's name
    and password there, and "Try it out" runs as that user, in its project, with its role."""
    expect = pytest.importorskip("playwright.sync_api").expect
    data_dir = tmp_path / "data"
    password = "correct horse battery"
    admin = create_token(data_dir, "--role", "admin")
    port = free_port()
    cmd = [sys.executable, "server.py", "--port", str(port), "--data-dir", str(data_dir)]
    with running(cmd, data_dir, port, tmp_path / "server.log", env={"KMEANS_AUTH": "required"}) as url:
        auth = {"Authorization": f"Bearer {admin}"}
        assert httpx.post(f"{url}/kmeans/projects", json={"id": "team-a"}, headers=auth).status_code == 201
        body = {"name": "ada", "password": password, "memberships": [{"project": "team-a", "role": "contributor"}]}
        assert httpx.post(f"{url}/kmeans/users", json=body, headers=auth).status_code == 201

        page.set_default_timeout(30_000)
        page.goto(f"{url}/kmeans/ui/")
        page.wait_for_selector(".opblock")
        whoami = page.locator("#operations-access-whoami")
        whoami.locator(".opblock-summary").click()
        whoami.locator("button.try-out__btn").click()
        whoami.locator("button.execute").click()
        status = whoami.locator(".live-responses-table .response .response-col_status").first
        expect(status).to_have_text("401", timeout=30_000)

        page.locator(".auth-wrapper button.authorize").click()
        dialog = page.locator(".modal-ux")
        dialog.wait_for()
        scheme = dialog.locator(".auth-container").filter(has_text="userAuth")
        # A wrong password first: the dialog shows the server's refusal and stays unauthorized.
        scheme.locator("#oauth_username").fill("ada")
        scheme.locator("#oauth_password").fill("not the password")
        scheme.locator("button.authorize").click()
        expect(scheme.locator(".errors")).to_contain_text("Unauthorized", timeout=10_000)
        scheme.locator("#oauth_password").fill(password)
        scheme.locator("button.authorize").click()
        expect(scheme.locator("button", has_text="Logout")).to_be_visible(timeout=10_000)
        scheme.locator("button.btn-done").click()
        dialog.wait_for(state="detached")

        whoami.locator("button.execute").click()
        expect(status).to_have_text("200", timeout=30_000)
        me = json.loads(whoami.locator(".live-responses-table .response-col_description pre").first.inner_text())
        assert (me["user"]["name"], me["role"], me["project"]) == ("ada", "contributor", "team-a")
        curl = whoami.locator(".curl-command").inner_text()
        assert "Authorization: Bearer kma_" in curl and password not in curl
