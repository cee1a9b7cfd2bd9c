"""Shared fixtures: every test gets its own data dir and app."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import connexion
import pytest
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
API_TESTS = ROOT / "tests" / "api"
# The two connexion app classes the API tier runs against, as connexion's own suite does
# (its conftest parametrizes the app fixture over FlaskApp and AsyncApp).
APP_CLASSES: dict[str, type] = {"async": connexion.AsyncApp, "flask": connexion.FlaskApp}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the API tests marked ``both_apps`` (every API test with KMEANS_TEST_APPS=both) on
    AsyncApp and on FlaskApp; the others on AsyncApp only (the default app class)."""
    marked = metafunc.definition.get_closest_marker("both_apps") is not None
    if marked and "app_class" not in metafunc.fixturenames:  # it would run on AsyncApp only, saying both
        raise pytest.UsageError(f"{metafunc.definition.nodeid} is marked both_apps but builds no app of app_class")
    if "app_class" not in metafunc.fixturenames or API_TESTS not in Path(str(metafunc.definition.path)).parents:
        return
    both = marked or os.environ.get("KMEANS_TEST_APPS", "").strip().lower() == "both"
    # Always parametrized (``[async]`` alone otherwise), so that a module's fixtures are built once
    # per app class, never again for tests that take the default.
    metafunc.parametrize("app_class", list(APP_CLASSES) if both else ["async"], indirect=True, scope="module")


@pytest.fixture(scope="module")
def app_class(request: pytest.FixtureRequest) -> type:
    """The connexion app class under test: AsyncApp, or FlaskApp for the ``[flask]`` runs."""
    return APP_CLASSES[getattr(request, "param", "async")]  # "async" outside tests/api


def local_client(app: Any) -> TestClient:
    """A test client whose requests come from 127.0.0.1, as a local user's would (a server
    without tokens serves only local clients)."""
    return app.test_client(client=("127.0.0.1", 50000))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private data dir and a small upload limit (1 MB) for limit tests."""
    return Settings(data_dir=tmp_path / "data", max_upload_bytes=1_000_000, max_concurrent_fits=2)


@pytest.fixture
def client(settings: Settings, app_class: type) -> Iterator[TestClient]:
    """A connexion test client over a fresh app (of the app class under test)."""
    app = build_app(settings, app_class)
    with local_client(app) as test_client:
        yield test_client


def wait_until_done(client: TestClient, path: str, timeout: float = 30) -> dict:
    """Poll the resource at ``path`` until it leaves queued/running; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        resource = client.get(path).json()
        if resource["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return resource
        time.sleep(0.02)


def wait_for_model(client: TestClient, model_id: str, timeout: float = 30) -> dict:
    """Poll a model until it leaves queued/running; bounded by ``timeout`` seconds."""
    return wait_until_done(client, f"/kmeans/models/{model_id}", timeout)
