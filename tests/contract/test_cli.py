"""The ``kmeans`` CLI in-process, against the app through connexion's test client."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from kmeans.cli import cli, parse_param

POINTS = "x,y\n1,2\n1,4\n1,0\n10,2\n10,4\n10,0\n"


@pytest.fixture
def run(client):
    """Run ``kmeans ARGS…`` in-process; returns the click Result (stdout and stderr apart)."""
    runner = CliRunner()

    def invoke(*args: str, obj: dict | None = None):
        return runner.invoke(cli, ["--url", "http://testserver", *args], obj={"http": client} if obj is None else obj)

    return invoke


@pytest.fixture
def points(tmp_path: Path) -> Path:
    path = tmp_path / "points.csv"
    path.write_text(POINTS)
    return path


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def upload(run, points: Path) -> str:
    return json.loads(ok(run("datasets", "upload", str(points), "--json")))["id"]


def fit(run, dataset_id: str, *more: str) -> dict:
    args = ("models", "fit", dataset_id, "--k", "2", "--param", "random_state=0", "--wait", "--json", *more)
    return json.loads(ok(run(*args)))


def test_help_lists_the_commands(run):
    out = ok(run("--help"))
    for command in ("datasets", "models", "predict", "ping"):
        assert command in out
    assert "upload" in ok(run("datasets", "--help")) and "fit" in ok(run("models", "--help"))


def test_ping(run):
    assert "ok" in ok(run("ping"))
    assert json.loads(ok(run("ping", "--json")))["status"] == "ok"


def test_datasets_commands(run, points: Path):
    dataset_id = json.loads(ok(run("datasets", "upload", str(points), "--name", "pts", "--json")))["id"]
    shown = ok(run("datasets", "show", dataset_id))
    assert dataset_id in shown and "pts" in shown
    listed = ok(run("datasets", "list"))
    assert dataset_id in listed and "datasets 1–1 of 1" in listed
    assert json.loads(ok(run("--json", "datasets", "list")))["total"] == 1
    rows = json.loads(ok(run("datasets", "rows", dataset_id, "--offset", "3", "--limit", "2", "--json")))
    assert rows["items"] == [[10.0, 2.0], [10.0, 4.0]] and rows["columns"] == ["x", "y"]
    table = ok(run("datasets", "rows", dataset_id, "--limit", "2"))
    assert "rows 1–2 of 6" in table and "1.0" in table
    assert "deleted" in ok(run("datasets", "delete", dataset_id))
    assert json.loads(ok(run("datasets", "list", "--json")))["total"] == 0


def test_upload_names_the_dataset_after_the_file(run, points: Path):
    assert json.loads(ok(run("datasets", "upload", str(points), "--json")))["name"] == "points.csv"


def test_models_commands(run, points: Path):
    dataset_id = upload(run, points)
    model = fit(run, dataset_id)
    assert model["status"] == "succeeded" and model["params"] == {"n_clusters": 2, "random_state": 0}
    model_id = model["id"]
    assert model_id in ok(run("models", "list"))
    filtered = run("models", "list", "--dataset", dataset_id, "--status", "succeeded", "--json")
    assert json.loads(ok(filtered))["total"] == 1
    assert "succeeded" in ok(run("models", "show", model_id))
    labels = ok(run("models", "labels", model_id)).split()
    assert len(labels) == 6 and labels[0] == labels[1] != labels[3]
    assert json.loads(ok(run("models", "labels", model_id, "--json"))) == [int(v) for v in labels]
    centers = json.loads(ok(run("models", "centers", model_id, "--json")))
    assert sorted(centers["centers"]) == [[1.0, 2.0], [10.0, 2.0]]
    assert f"centers of {model_id}" in ok(run("models", "centers", model_id))
    new = points.with_name("new.csv")
    new.write_text("0,0\n12,3\n")
    assert ok(run("predict", model_id, str(new))).split() == [labels[2], labels[3]]
    assert json.loads(ok(run("predict", model_id, str(new), "--json"))) == [int(labels[2]), int(labels[3])]
    picture = points.with_name("clusters.png")
    assert "wrote" in ok(run("models", "plot", model_id, "-o", str(picture)))
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "deleted" in ok(run("models", "delete", model_id))


def test_fit_without_wait_answers_at_once_with_the_queued_model(run, points: Path):
    model = json.loads(ok(run("models", "fit", upload(run, points), "--k", "2", "--json")))
    assert model["status"] in ("queued", "running", "succeeded")


def test_params_are_parsed_as_json_when_they_are(run):
    assert parse_param("n_init=10") == ("n_init", 10)
    assert parse_param("tol=1e-3") == ("tol", 0.001)
    assert parse_param("random_state=null") == ("random_state", None)
    assert parse_param("init=random") == ("init", "random")


def test_a_server_error_exits_1_with_the_detail_on_stderr(run, points: Path):
    result = run("datasets", "show", "ds_0000000000000000")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error 404: no dataset with id ds_0000000000000000"
    assert result.stdout == ""
    too_many = run("models", "fit", upload(run, points), "--k", "50")
    assert too_many.exit_code == 1 and too_many.stderr.startswith("error 422: n_clusters (50) is larger")
    bad_param = run("models", "fit", upload(run, points), "--param", "init=sideways")
    assert bad_param.exit_code == 1 and "error 400" in bad_param.stderr and "sideways" in bad_param.stderr


def test_usage_errors_exit_2(run, tmp_path: Path):
    assert run("models", "fit").exit_code == 2  # missing DATASET_ID
    assert run("models", "fit", "ds_x", "--param", "oops").exit_code == 2
    assert run("datasets", "upload", str(tmp_path / "missing.csv")).exit_code == 2
    assert run("nonsense").exit_code == 2


def test_an_unreachable_server_exits_3_naming_the_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = CliRunner().invoke(cli, ["--url", url, "datasets", "list"], obj={})
    assert result.exit_code == 3
    assert f"cannot connect to {url}" in result.stderr


def test_kmeans_url_comes_from_the_environment():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = CliRunner(env={"KMEANS_URL": url}).invoke(cli, ["ping"], obj={})
    assert result.exit_code == 3 and url in result.stderr
