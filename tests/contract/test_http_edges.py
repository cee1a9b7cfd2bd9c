"""Requests schemathesis found answered with a 500 or off the contract, pinned down one by one."""

from __future__ import annotations

import pytest

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    "path",
    ["/kmeans/datasets/x%0Ay", "/kmeans/models/%0A/labels", "/kmeans/models/a%0Db/centers", "/kmeans/ping%0A"],
)
def test_a_line_break_in_the_path_is_404_not_500(client, path: str):
    # Starlette's mount of /kmeans does not match across a line break: the request used to
    # reach the Flask handler outside connexion's operation context (RuntimeError, 500).
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert "line break" in response.json()["detail"]


@pytest.mark.parametrize(
    "path", ["/kmeans/fit", "/kmeans/models", "/kmeans/datasets", "/kmeans/models/m_0000000000000000/predictions"]
)
def test_a_json_body_that_is_not_utf8_is_400_not_500(client, path: str):
    response = client.post(path, content=b"\xa5{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM
    assert "not valid utf-8" in response.json()["detail"].lower()


def test_multipart_fields_the_spec_does_not_name_are_400(client):
    # The spec says so too now (additionalProperties: false), so generated clients and
    # schemathesis agree with the server.
    files = {"file": ("a.csv", b"1,2\n", "text/csv")}
    response = client.post("/kmeans/upload", files=files, data={"extra": "1"})
    assert response.status_code == 400
    assert "extra" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "methods"),
    [("/kmeans/models", {"GET", "POST"}), ("/kmeans/datasets/ds_0000000000000000", {"GET", "DELETE"})],
)
def test_405_allow_lists_every_method_of_the_path(client, path: str, methods: set[str]):
    response = client.request("PATCH", path)
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")} - {"HEAD", "OPTIONS"}
    assert allowed == methods
