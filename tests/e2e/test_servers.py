"""End to end: the Dockerfile's gunicorn command and ``python server.py`` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT, dockerfile_command, free_port, running

pytestmark = pytest.mark.e2e
EXAMPLES = ROOT / "examples"


def run_example(args: list[str], url: str) -> str:
    """Run an examples/ script against ``url``; fail the test with its output if it fails."""
    env = {**os.environ, "KMEANS_URL": url}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def sections(output: str) -> list[list[str]]:
    """The non-blank lines under each ``== title`` line of an example's output."""
    parts: list[list[str]] = []
    for line in output.splitlines():
        if line.startswith("== "):
            parts.append([])
        elif line.strip():
            parts[-1].append(line.strip())
    return parts


def classic_predict(url: str, job_id: int) -> list[str]:
    files = {"file": ("predict.csv", (EXAMPLES / "predict.csv").read_bytes(), "text/csv")}
    response = httpx.post(
        f"{url}/kmeans/predict", data={"job_id": str(job_id)}, files=files, headers={"accept": "text/csv"}
    )
    assert response.status_code == 200, response.text
    return response.text.split()


def test_gunicorn_runs_examples_shares_state_across_workers_and_restarts(gunicorn_server, tmp_path: Path):
    data_dir = tmp_path / "data"
    with gunicorn_server(data_dir) as url:
        upload, fit_labels, predicted = sections(run_example(["bash", "examples/classic.sh"], url))
        upload = json.loads(upload[0])
        assert upload["job_id"] == 0 and upload["filename"] == "model.csv"
        assert len(fit_labels) == 6 and all(label.isdigit() for label in fit_labels)
        assert len(predicted) == 2 and all(label.isdigit() for label in predicted)
        # (0, 0) is nearest to the training point (1, 0): it gets that point's label.
        assert predicted[0] == fit_labels[2]

        run_example([sys.executable, "examples/resource_api.py"], url)

        # Fresh connections land on either of the two workers: all must see the same model.
        for _ in range(20):
            assert classic_predict(url, 0) == predicted

    with gunicorn_server(data_dir) as url:
        assert classic_predict(url, 0) == predicted
        files = {"file": ("other.csv", b"5,5\n6,6\n7,7\n", "text/csv")}
        again = httpx.post(f"{url}/kmeans/upload", files=files)
        assert again.json()["job_id"] == 1
        models = httpx.get(f"{url}/kmeans/models").json()
        assert models["total"] == 2 and {m["status"] for m in models["items"]} == {"succeeded"}


def test_gunicorn_serves_the_api_on_flaskapp_with_kmeans_app_flask(gunicorn_server, tmp_path: Path):
    """The Dockerfile's gunicorn command with KMEANS_APP=flask: the examples, an event stream,
    streamed CSV labels, problems, the served spec and Swagger UI, across its two workers."""
    with gunicorn_server(tmp_path / "data", KMEANS_APP="flask") as url:
        upload, fit_labels, predicted = sections(run_example(["bash", "examples/classic.sh"], url))
        assert json.loads(upload[0])["job_id"] == 0
        assert len(fit_labels) == 6 and all(label.isdigit() for label in fit_labels)
        assert predicted[0] == fit_labels[2]  # (0, 0) is nearest to the training point (1, 0)
        run_example([sys.executable, "examples/resource_api.py"], url)
        for _ in range(10):  # fresh connections land on either worker
            assert classic_predict(url, 0) == predicted
        model = httpx.get(f"{url}/kmeans/models?status=succeeded").json()["items"][0]
        with httpx.stream("GET", f"{url}/kmeans/models/{model['id']}/events", timeout=30) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            stream = events.read().decode()
        assert "event: model" in stream and '"status":"succeeded"' in stream
        labels = httpx.get(f"{url}/kmeans/models/{model['id']}/labels", headers={"accept": "text/csv"})
        assert labels.headers["content-type"].startswith("text/csv") and len(labels.text.split()) == model["rows"]
        refused = httpx.post(f"{url}/kmeans/datasets", content=b"1\n", headers={"content-type": "text/plain"})
        assert refused.status_code == 415 and refused.headers["content-type"] == "application/problem+json"
        assert httpx.put(f"{url}/kmeans/ping").headers["allow"] == "GET"
        assert httpx.get(f"{url}/kmeans/ui/").status_code == 200
        assert "/datasets/{dataset_id}/rows" in httpx.get(f"{url}/kmeans/openapi.json").json()["paths"]


def test_gunicorn_serves_the_flask_mount_example_with_its_own_route(tmp_path: Path):
    """examples/flask_mount.py's app factory under the Dockerfile's gunicorn: the Flask
    application's route (which only a FlaskApp has) beside the API."""
    port = free_port()
    cmd = [*dockerfile_command(port)[:-1], "--chdir", str(EXAMPLES), "flask_mount:create_app()"]
    with running(cmd, tmp_path / "data", port, tmp_path / "gunicorn.log") as url:
        own = httpx.get(f"{url}/shop/status")
        assert own.status_code == 200 and own.json()["served_by"] == "flask"
        dataset = httpx.post(f"{url}/kmeans/datasets", json={"data": [[0.0], [0.5], [10.0], [10.5]]}).json()
        fit = httpx.post(f"{url}/kmeans/models", json={"dataset_id": dataset["id"], "params": {"n_clusters": 2}})
        assert fit.status_code == 202, fit.text
        deadline = time.monotonic() + 60
        while (model := httpx.get(f"{url}/kmeans/models/{fit.json()['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, model
            time.sleep(0.1)
        labels = httpx.get(f"{url}/kmeans/models/{model['id']}/labels").json()["labels"]
        assert model["status"] == "succeeded" and labels[0] == labels[1] != labels[2] == labels[3]


def test_embedded_server_serves_the_classic_flow(embedded_server, tmp_path: Path):
    with embedded_server(tmp_path / "data") as url:
        upload, fit_labels, predicted = sections(run_example(["bash", "examples/classic.sh"], url))
        assert json.loads(upload[0])["job_id"] == 0
        assert len(fit_labels) == 6 and len(predicted) == 2
        assert httpx.get(f"{url}/kmeans/ui/").status_code == 200
        spec = httpx.get(f"{url}/kmeans/openapi.json").json()
        assert "/datasets/{dataset_id}/rows" in spec["paths"]


def test_the_mixed_table_example_runs_end_to_end(embedded_server, tmp_path: Path):
    with embedded_server(tmp_path / "data") as url:
        parts = sections(run_example(["bash", "examples/mixed.sh"], url))
    dataset, columns, fitted, centers, labels, predicted = parts
    types = {c["name"]: (c["type"], c["missing"]) for c in json.loads(dataset[0])["schema"]}
    assert types == {"customer_id": ("id", 0), "segment": ("categorical", 1), "region": ("categorical", 0),
                     "spend": ("numeric", 2), "visits": ("numeric", 0), "tenure_years": ("numeric", 1)}
    stats = {c["name"]: c for c in json.loads(columns[0])["items"]}
    assert stats["spend"]["min"] < stats["spend"]["median"] < stats["spend"]["max"]
    assert fitted[0].endswith(" succeeded")
    assert centers[0].split(",")[:4] == ["spend", "visits", "tenure_years", "segment=bronze"]
    assert labels[0] == "id,label" and labels[1].startswith("C001,")
    answer = json.loads(predicted[0])
    assert answer["ids"] == ["N001", "N002", "N003"] and answer["unknown_categories"] == {"region": 1}
    # The low spenders (N001, N003) share C001's cluster; the big spender N002 does not.
    low = int(labels[1].split(",")[1])
    assert answer["labels"] == [low, 1 - low, low]


def test_a_large_raw_mixed_csv_body_is_read_from_disk_by_pyarrow(embedded_server, tmp_path: Path):
    """Past 1 MiB a raw body is spooled as it arrives; pyarrow reads in threads of its own,
    which cannot pull the request stream from the event loop: it must get the spooled file
    (under uvicorn this was a 500 for any raw CSV of a few MB with a text column)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(2)
    rows = 150_000
    frame = pd.DataFrame({
        "id": [f"R{i:06d}" for i in range(rows)],
        "x": np.where(rng.random(rows) < 0.05, np.nan, rng.normal(0, 1, rows)),
        "kind": rng.choice(["a", "b", "c"], rows),
        "y": rng.normal(5, 2, rows),
    })
    content = frame.to_csv(index=False).encode()
    assert len(content) > 6 * 1024 * 1024
    with embedded_server(tmp_path / "data") as url:
        created = httpx.post(f"{url}/kmeans/datasets", content=content, headers={"Content-Type": "text/csv"},
                             timeout=120)
        assert created.status_code == 201, created.text
        types = [(c["name"], c["type"]) for c in created.json()["schema"]]
        assert types == [("id", "id"), ("x", "numeric"), ("kind", "categorical"), ("y", "numeric")]
        model = httpx.post(f"{url}/kmeans/models", json={"dataset_id": created.json()["id"],
                                                          "params": {"n_clusters": 3, "n_init": 1}}).json()
        deadline = time.monotonic() + 60
        while model["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
            model = httpx.get(f"{url}/kmeans/models/{model['id']}").json()
        assert model["status"] == "succeeded", model
        answer = httpx.post(f"{url}/kmeans/models/{model['id']}/predictions", content=content,
                            headers={"Content-Type": "text/csv"}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["ids"][:2] == ["R000000", "R000001"] and len(answer.json()["labels"]) == rows
