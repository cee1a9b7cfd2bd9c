"""Shared fixtures: every test gets its own data dir and app."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def local_client(app: Any) -> TestClient:
    """A test client whose requests come from 127.0.0.1, as a local user's would (a server
    without tokens serves only local clients)."""
    return app.test_client(client=("127.0.0.1", 50000))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private data dir and a small upload limit (1 MB) for limit tests."""
    return Settings(data_dir=tmp_path / "data", max_upload_bytes=1_000_000, max_concurrent_fits=2)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A connexion test client over a fresh app."""
    app = build_app(settings)
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
