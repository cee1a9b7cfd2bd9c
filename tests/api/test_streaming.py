"""Uploads stream: multipart parts are spooled to disk once, limits hold mid-stream, and
nothing is left behind in the data dir's tmp folder."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from kmeans.config import Settings
from tests.conftest import wait_for_model


def blob_csv(rows: int, seed: int = 0) -> bytes:
    """A CSV of ``rows`` 4-column points in 3 well separated blobs."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0, 0], [20, 20, 20, 20], [-20, 20, -20, 20]], dtype=float)
    points = centers[rng.integers(0, 3, rows)] + rng.normal(size=(rows, 4))
    return ("\n".join(",".join(f"{v:.5f}" for v in row) for row in points) + "\n").encode()


def leftovers(settings: Settings) -> list[str]:
    return sorted(p.name for p in (settings.data_dir / "tmp").iterdir())


@pytest.mark.both_apps
def test_multipart_upload_of_many_chunks_is_stored_exactly(client: TestClient, settings: Settings):
    body = blob_csv(20_000)  # ~0.8 MB: many receive() messages, several parser chunks
    assert len(body) < settings.max_upload_bytes
    response = client.post("/kmeans/datasets", files={"file": ("blobs.csv", body, "text/csv")})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["rows"] == 20_000 and dataset["n_features"] == 4
    assert dataset["sha256"] == hashlib.sha256(body).hexdigest()
    assert dataset["size_bytes"] == len(body)
    rows = client.get(f"/kmeans/datasets/{dataset['id']}/rows", params={"offset": 19_999, "limit": 1}).json()
    last = [float(v) for v in body.decode().strip().splitlines()[-1].split(",")]
    assert rows["items"] == [last]
    assert leftovers(settings) == []


@pytest.mark.both_apps
def test_multipart_over_the_limit_is_413_and_leaves_nothing(client: TestClient, settings: Settings):
    body = blob_csv(30_000)  # ~1.2 MB, over the 1 MB limit of the test settings
    assert len(body) > settings.max_upload_bytes
    for path in ("/kmeans/datasets", "/kmeans/upload"):
        response = client.post(path, files={"file": ("big.csv", body, "text/csv")})
        assert response.status_code == 413, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert str(settings.max_upload_bytes) in response.json()["detail"]
    assert client.get("/kmeans/datasets").json()["total"] == 0
    assert leftovers(settings) == []


def chunks(body: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


@pytest.mark.both_apps
def test_raw_csv_without_content_length_streams_in(client: TestClient, settings: Settings):
    body = blob_csv(5_000)
    response = client.post("/kmeans/datasets", content=chunks(body), headers={"Content-Type": "text/csv"})
    assert response.status_code == 201, response.text
    assert response.json()["rows"] == 5_000
    assert leftovers(settings) == []


@pytest.mark.both_apps
def test_raw_csv_without_content_length_over_the_limit_is_413(client: TestClient, settings: Settings):
    body = blob_csv(30_000)
    response = client.post("/kmeans/datasets", content=chunks(body), headers={"Content-Type": "text/csv"})
    assert response.status_code == 413, response.text
    assert client.get("/kmeans/datasets").json()["total"] == 0
    assert leftovers(settings) == []


def test_bad_csv_in_multipart_leaves_no_spooled_file(client: TestClient, settings: Settings):
    response = client.post("/kmeans/upload", files={"file": ("bad.csv", b"1,2\n3,x\n", "text/csv")})
    assert response.status_code == 422
    assert "row 2, column 2" in response.json()["detail"]
    assert leftovers(settings) == []


def test_invalid_form_field_is_400_naming_it_and_leaves_nothing(client: TestClient, settings: Settings):
    files = {"file": ("p.csv", b"0,0\n", "text/csv")}
    response = client.post("/kmeans/predict", data={"job_id": "zero"}, files=files)
    assert response.status_code == 400
    assert "job_id" in response.json()["detail"]
    assert leftovers(settings) == []


@pytest.mark.both_apps
def test_malformed_multipart_body_is_400(client: TestClient):
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    response = client.post("/kmeans/upload", content=b"--xyz\r\nno headers end", headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


def test_multipart_without_boundary_is_400(client: TestClient):
    response = client.post("/kmeans/upload", content=b"abc", headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 400
    assert "boundary" in response.json()["detail"]


@pytest.mark.both_apps
def test_large_label_sets_stream_in_pieces_and_match(client: TestClient, monkeypatch):
    from kmeans.api import media

    monkeypatch.setattr(media, "STREAM_LABELS", 1000)  # force several pieces
    body = blob_csv(4_500)
    dataset = client.post("/kmeans/datasets", content=body, headers={"Content-Type": "text/csv"}).json()
    queued = client.post("/kmeans/models", json={"dataset_id": dataset["id"], "params": {"n_clusters": 3}})
    model = wait_for_model(client, queued.json()["id"])
    assert model["status"] == "succeeded"
    as_json = client.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]
    as_csv = client.get(f"/kmeans/models/{model['id']}/labels", headers={"Accept": "text/csv"}).text
    assert len(as_json) == 4_500
    assert [int(v) for v in as_csv.split()] == as_json
    assert np.bincount(as_json).tolist() == model["cluster_sizes"]
