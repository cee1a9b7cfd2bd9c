"""Authorization headers as clients get them wrong, on servers that started with and without tokens."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kmeans.access import Access
from kmeans.config import Settings
from kmeans.store import Store
from server import build_app
from tests.conftest import local_client


@pytest.fixture(params=["token before start", "first token after start"])
def secured(request, tmp_path: Path, app_class: type) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A client of a server that requires tokens, and an admin's Authorization header."""
    data_dir = tmp_path / "data"
    if request.param == "token before start":
        _, secret = Access(Store(data_dir)).create_token("admin")
    with local_client(build_app(Settings(data_dir=data_dir), app_class)) as client:
        if request.param == "first token after start":
            secret = client.post("/kmeans/tokens", json={"role": "admin"}).json()["token"]
        yield client, {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "this server requires a bearer token (Authorization: Bearer ...)"),
        ("Basic dXNlcjpwYXNz", "the Authorization header is not 'Bearer <token>'"),
        ("Bearer", "the Authorization header is not 'Bearer <token>'"),
        ("Bearer kms_not-a-token", "the bearer token is not valid"),
    ],
)
def test_refusals_name_what_is_wrong_with_the_header(secured, header: str | None, detail: str):
    client, _ = secured
    answer = client.get("/kmeans/datasets", headers={"Authorization": header} if header else {})
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == detail
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="kmeans"')
    # RFC 6750: an error code only when credentials were sent.
    assert ('error="invalid_token"' in challenge) == (header is not None)


@pytest.mark.both_apps
def test_the_scheme_name_is_case_insensitive(secured):
    client, admin = secured
    shouted = {"Authorization": "BEARER " + admin["Authorization"].split(" ", 1)[1]}
    assert client.get("/kmeans/me", headers=shouted).json()["role"] == "admin"


def test_admins_create_only_in_projects_that_exist(secured):
    client, admin = secured
    answer = client.post("/kmeans/datasets?project=nowhere", json={"data": [[1.0]]}, headers=admin)
    assert answer.status_code == 404 and answer.json()["detail"] == "no project with id nowhere"
    assert client.get("/kmeans/datasets", headers=admin).json()["total"] == 0
    assert client.post("/kmeans/projects", json={"id": "team-a"}, headers=admin).status_code == 201
    made = client.post("/kmeans/datasets?project=team-a", json={"data": [[1.0]]}, headers=admin)
    assert made.status_code == 201 and made.json()["project"] == "team-a"
    assert client.get("/kmeans/datasets?project=default", headers=admin).json()["total"] == 0


@pytest.mark.both_apps
def test_an_open_server_says_so_in_its_log_and_serves_local_clients_only(tmp_path: Path, caplog, app_class: type):
    with caplog.at_level(logging.WARNING, logger="kmeans"):
        app = build_app(Settings(data_dir=tmp_path / "data"), app_class)
    assert "no tokens exist" in caplog.text and "this machine only" in caplog.text
    with local_client(app) as client:
        assert client.get("/kmeans/me").json()["open"] is True
    with app.test_client(client=("192.0.2.10", 50000)) as remote:
        refused = remote.get("/kmeans/datasets")
        assert refused.status_code == 403 and "own machine" in refused.json()["detail"]
        assert remote.get("/kmeans/ping").status_code == 200


def test_insecure_serves_other_machines_while_no_token_exists(tmp_path: Path):
    app = build_app(Settings(data_dir=tmp_path / "data", insecure=True))
    with app.test_client(client=("192.0.2.10", 50000)) as remote:
        assert remote.get("/kmeans/datasets").status_code == 200
