"""The rest of the API from the ``kmeans`` CLI and the SDK (issue 15, item 6): export and import,
online pushes, versions and restores, distances and anomalies, sweeps' list, plot, cancel and
delete, and live events — in-process through the test client, and as real processes (the
``kmeans`` console script against ``python server.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.cluster import KMeans

from kmeans.cli import cli
from kmeans.client import KMeansClient
from tests.e2e.conftest import free_port, running

POINTS = "x,y\n1,2\n1,4\n1,0\n10,2\n10,4\n10,0\n"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch):
    monkeypatch.delenv("KMEANS_TOKEN", raising=False)


@pytest.fixture
def run(client):
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, ["--url", "http://testserver", *args], obj={"http": client})


@pytest.fixture
def points(tmp_path: Path) -> Path:
    path = tmp_path / "points.csv"
    path.write_text(POINTS)
    return path


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def fitted(run, points: Path, *params: str) -> str:
    dataset_id = json.loads(ok(run("datasets", "upload", str(points), "--json")))["id"]
    args = ["--param", "random_state=0", *(x for p in params for x in ("--param", p))]
    return json.loads(ok(run("models", "fit", dataset_id, "--k", "2", *args, "--wait", "--json")))["id"]


def test_export_and_import_round_trip(run, points: Path, tmp_path: Path):
    model_id = fitted(run, points)
    document = tmp_path / "model.json"
    assert "wrote" in run("models", "export", model_id, "-o", str(document)).stderr
    assert json.loads(document.read_text())["centers"]
    assert json.loads(ok(run("models", "export", model_id))) == json.loads(document.read_text())
    imported = json.loads(ok(run("models", "import", str(document), "--json")))
    assert imported["id"] != model_id and imported["status"] == "succeeded"
    centers = [json.loads(ok(run("models", "centers", m, "--json")))["centers"] for m in (model_id, imported["id"])]
    assert centers[0] == centers[1]
    not_json = tmp_path / "bad.json"
    not_json.write_text("{nope")
    refused = run("models", "import", str(not_json))
    assert refused.exit_code == 2 and "not a JSON document" in refused.stderr


def test_predict_with_distances_and_anomalies_matches_scikit_learn(run, points: Path, tmp_path: Path):
    model_id = fitted(run, points)
    new = tmp_path / "new.csv"
    new.write_text("y,x\n2,1\n3,10\n50,50\n")
    rows = json.loads(ok(run("predict", model_id, str(new), "--distances", "--threshold", "5", "--json")))
    reference = KMeans(2, random_state=0, n_init="auto").fit(np.loadtxt(POINTS.splitlines()[1:], delimiter=","))
    asked = np.array([[1, 2], [10, 3], [50, 50]], dtype=float)
    expected = reference.transform(asked).min(axis=1)
    assert [r["label"] for r in rows] == reference.predict(asked).tolist()  # same model: same seed, same data
    assert np.allclose([r["distance"] for r in rows], expected)
    assert [r["anomaly"] for r in rows] == (expected > 5).tolist()
    lines = ok(run("predict", model_id, str(new), "--anomalies", "--threshold", "5")).split("\n")
    assert lines[2].split("\t")[1] == "true" and lines[0].split("\t")[1] == "false"


def test_online_push_versions_and_restore(run, points: Path, tmp_path: Path):
    model_id = fitted(run, points, "method=minibatch")
    more = tmp_path / "more.csv"
    more.write_text("x,y\n1,3\n10,3\n")
    pushed = json.loads(ok(run("models", "push", model_id, str(more), "--json")))
    assert pushed["version"] == 2 and pushed["rows_added"] == 2
    listed = ok(run("models", "versions", model_id))
    assert "current" in listed and "data" in listed
    assert json.loads(ok(run("models", "versions", model_id, "--json")))["current"] == 2
    assert json.loads(ok(run("models", "version", model_id, "1", "--json")))["source"] == "fit"
    restored = ok(run("models", "restore", model_id, "1"))
    assert "version 3" in restored and "restore" in restored
    missing = run("models", "version", model_id, "9")
    assert missing.exit_code == 1 and "error 404" in missing.stderr


def test_sweeps_list_plot_cancel_and_delete(run, points: Path, tmp_path: Path):
    dataset_id = json.loads(ok(run("datasets", "upload", str(points), "--json")))["id"]
    sweep = json.loads(ok(run("sweeps", "run", dataset_id, "--k-min", "2", "--k-max", "4", "--json")))
    assert sweep["id"] in ok(run("sweeps", "list")) and "sweeps 1–1 of 1" in ok(run("sweeps", "list"))
    assert json.loads(ok(run("sweeps", "list", "--dataset", "ds_0000000000000000", "--json")))["total"] == 0
    picture = tmp_path / "sweep.png"
    ok(run("sweeps", "plot", sweep["id"], "-o", str(picture)))
    assert picture.read_bytes().startswith(PNG)
    cancelled = run("sweeps", "cancel", sweep["id"])  # it has ended: the server's 409, its detail shown
    assert cancelled.exit_code == 1 and "error 409" in cancelled.stderr
    assert f"deleted sweep {sweep['id']}" in ok(run("sweeps", "delete", sweep["id"]))
    assert run("sweeps", "show", sweep["id"]).exit_code == 1


def test_watch_prints_a_fit_to_its_end(run, points: Path):
    model_id = fitted(run, points)
    lines = [json.loads(line) for line in ok(run("models", "watch", model_id, "--json")).splitlines()]
    assert lines and lines[-1]["event"] == "model" and lines[-1]["data"]["status"] == "succeeded"
    assert "succeeded" in ok(run("models", "watch", model_id))


def kmeans_command() -> list[str]:
    """The installed console script (what a user types), else the module it runs."""
    found = shutil.which("kmeans", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [found] if found else [sys.executable, "-m", "kmeans.cli"]


@pytest.mark.e2e
def test_the_whole_flow_as_real_processes(tmp_path: Path, points: Path):
    """The kmeans command against python server.py: fit, watch, events, export/import, sweeps."""
    data_dir, port = tmp_path / "data", free_port()
    server = [sys.executable, "server.py", "--port", str(port), "--data-dir", str(data_dir)]
    with running(server, data_dir, port, tmp_path / "server.log") as url:
        env = {**os.environ, "KMEANS_URL": url}
        env.pop("KMEANS_TOKEN", None)

        def kmeans(*args: str) -> str:
            done = subprocess.run([*kmeans_command(), *args], env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{args}: {done.stderr}"
            return done.stdout

        dataset_id = json.loads(kmeans("datasets", "upload", str(points), "--json"))["id"]
        model = json.loads(kmeans("models", "fit", dataset_id, "--k", "2", "--wait", "--json"))
        assert model["status"] == "succeeded"
        assert "succeeded" in kmeans("models", "watch", model["id"])
        happened = [json.loads(x) for x in kmeans("events", "--last-event-id", "0", "--max-events", "2",
                                                  "--json").splitlines()]
        assert [e["data"]["id"] for e in happened] == [model["id"]] * 2  # queued, then running
        document = tmp_path / "m.json"
        kmeans("models", "export", model["id"], "-o", str(document))
        copy = json.loads(kmeans("models", "import", str(document), "--json"))
        assert kmeans("predict", copy["id"], str(points)) == kmeans("predict", model["id"], str(points))
        sweep = json.loads(kmeans("sweeps", "run", dataset_id, "--k-max", "3", "--json"))
        assert sweep["status"] == "succeeded" and sweep["id"] in kmeans("sweeps", "list")
        with KMeansClient(url) as sdk:  # the SDK's live events of a finished sweep: its last state, then closed
            last = list(sdk.sweep_events(sweep["id"], timeout=30))[-1]
        assert (last.event, last.data["status"]) == ("sweep", "succeeded")


def test_sdk_events_name_missing_things(client):
    from kmeans.client import ApiError

    sdk = KMeansClient("http://testserver", http=client)
    with pytest.raises(ApiError) as missing:
        list(sdk.model_events("m_0000000000000000", timeout=5))
    assert missing.value.status == 404


