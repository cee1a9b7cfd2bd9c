"""Plain helpers shared by the API tests (no fixtures: those come from tests/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from conftest import EXAMPLES, local_client, wait_for_model
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app

__all__ = [
    "CSV",
    "EXAMPLES",
    "JSON",
    "MODEL_CSV",
    "MODEL_POINTS",
    "PREDICT_CSV",
    "PROBLEM",
    "app_client",
    "assert_problem",
    "create_csv_dataset",
    "csv_lines",
    "fit",
    "leftovers",
    "upload",
    "wait_for_model",
]

PROBLEM = "application/problem+json"
CSV = "text/csv"
JSON = "application/json"

MODEL_CSV = (EXAMPLES / "model.csv").read_bytes()
PREDICT_CSV = (EXAMPLES / "predict.csv").read_bytes()
# What examples/model.csv holds: three points near x=1 and three near x=10.
MODEL_POINTS = [[1.0, 2.0], [1.0, 4.0], [1.0, 0.0], [10.0, 2.0], [10.0, 4.0], [10.0, 0.0]]


def assert_problem(response: Any, status: int, *fragments: str) -> dict[str, Any]:
    """Check an error answer: the status, problem+json, and a detail naming each fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    problem = response.json()
    assert problem["status"] == status
    assert isinstance(problem.get("detail"), str) and problem["detail"].strip(), problem
    for fragment in fragments:
        assert fragment.lower() in problem["detail"].lower(), (fragment, problem)
    return problem


def upload(client: TestClient, content: bytes = MODEL_CSV, filename: str = "model.csv") -> Any:
    """POST a file to the classic /upload, as curl -F file=@... does."""
    return client.post(
        "/kmeans/upload",
        files={"file": (filename, content, CSV)},
        headers={"accept": JSON},
    )


def create_csv_dataset(client: TestClient, content: bytes, name: str | None = None) -> dict[str, Any]:
    """Create a dataset from a raw text/csv body and return it (asserting 201)."""
    url = "/kmeans/datasets" + (f"?name={name}" if name else "")
    response = client.post(url, content=content, headers={"Content-Type": CSV})
    assert response.status_code == 201, response.text
    return response.json()


def fit(client: TestClient, dataset_id: str, **params: Any) -> dict[str, Any]:
    """POST /models and wait for the fit to finish; returns the finished model."""
    response = client.post("/kmeans/models", json={"dataset_id": dataset_id, "params": params})
    assert response.status_code == 202, response.text
    return wait_for_model(client, response.json()["id"])


def csv_lines(response: Any) -> list[str]:
    """The lines of a text/csv answer (asserting it is CSV)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(CSV), response.headers
    return response.text.splitlines()


def leftovers(data_dir: Path) -> list[str]:
    """Files left in the data dir's temp folder (there should be none between requests)."""
    tmp = data_dir / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


@contextmanager
def app_client(data_dir: Path, app_class: type | None = None) -> Iterator[TestClient]:
    """A test client over an app (of ``app_class``, AsyncApp by default) on ``data_dir``, with the
    settings of the ``settings`` fixture.

    For module-scoped apps: tests that only add to the app, or must leave it unchanged,
    share one app instead of building their own.
    """
    settings = Settings(data_dir=data_dir, max_upload_bytes=1_000_000, max_concurrent_fits=2)
    with local_client(build_app(settings, app_class)) as client:
        yield client


def json_dataset(api: TestClient, data: Any, columns: list[str] | None = None) -> str:
    """Create a dataset from JSON rows (a list or an array); returns its id."""
    body: dict[str, Any] = {"data": np.asarray(data).tolist()}
    if columns:
        body["columns"] = columns
    response = api.post("/kmeans/datasets", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def sse(text: str, event: str) -> list[dict[str, Any]]:
    """The ``event`` events of a Server-Sent Events body, each its JSON data plus ``event_id``."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields.get("event") == event:
            found.append({**json.loads(fields["data"]), "event_id": int(fields["id"])})
    return found
