"""The ``kmeans`` CLI in-process, against the app through connexion's test client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from kmeans.cli import EXIT_AUTH, cli, parse_duration, parse_param
from kmeans.config import Settings
from server import build_app
from tests.e2e.conftest import ROOT, free_port, running

POINTS = "x,y\n1,2\n1,4\n1,0\n10,2\n10,4\n10,0\n"


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch):
    """A KMEANS_TOKEN of the person running the tests must not leak into them."""
    monkeypatch.delenv("KMEANS_TOKEN", raising=False)


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


def test_scorings_commands(run, points: Path, tmp_path: Path):
    import pyarrow.parquet as pq

    dataset_id = upload(run, points)
    model = fit(run, dataset_id)
    table = ok(run("scorings", "run", model["id"], dataset_id, "--threshold", "1.5", "-o", str(tmp_path / "s.csv")))
    assert f"model {model['id']}: succeeded, 6 of 6 rows" in table and "50.0%" in table
    assert "anomalies: 4 (distance above 1.5)" in table  # (1, 4) and (1, 0) are 2 from (1, 2); so are 10's
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "row,label,distance,anomaly" and len(lines) == 7
    listed = json.loads(ok(run("scorings", "list", model["id"], "--json")))
    scoring_id = listed["items"][0]["id"]
    assert scoring_id in ok(run("scorings", "list", model["id"]))
    shown = json.loads(ok(run("scorings", "show", model["id"], scoring_id, "--json")))
    assert shown["cluster_sizes"] == [3, 3] and shown["anomalies"] == 4
    page = json.loads(ok(run("scorings", "rows", model["id"], scoring_id, "--limit", "2", "--json")))
    assert [r["row"] for r in page["items"]] == [0, 1]
    assert "distance" in ok(run("scorings", "rows", model["id"], scoring_id))
    saved = json.loads(ok(run("scorings", "download", model["id"], scoring_id, "-o", str(tmp_path / "s.parquet"),
                              "--json")))
    assert saved["format"] == "parquet"
    labels = [int(line.split(",")[1]) for line in lines[1:]]
    assert pq.read_table(tmp_path / "s.parquet").column("label").to_pylist() == labels
    assert "scoring" in ok(run("jobs", "--kind", "scoring", "--status", "succeeded"))
    refused = run("scorings", "cancel", model["id"], scoring_id)
    assert refused.exit_code == 1 and "already succeeded" in refused.stderr
    assert "deleted scoring" in ok(run("scorings", "delete", model["id"], scoring_id))
    missing = run("scorings", "show", model["id"], scoring_id)
    assert missing.exit_code == 1 and "error 404" in missing.stderr


def test_name_and_profile_commands(run, points: Path):
    model_id = fit(run, upload(run, points))["id"]
    labels = ok(run("models", "labels", model_id)).split()
    low, high = labels[0], labels[3]  # x near 1, x near 10
    shown = ok(run("models", "name", model_id, f"{low}=bargain hunters", f"{high}=big spenders"))
    assert "bargain hunters" in shown and "big spenders" in shown
    named = json.loads(ok(run("models", "name", model_id, f"{high}=", "--json")))
    assert named["cluster_names"] == {low: "bargain hunters"}
    ok(run("models", "name", model_id, f"{high}=big spenders"))
    new = points.with_name("new.csv")
    new.write_text("x,y\n0,0\n12,3\n")
    assert ok(run("predict", model_id, str(new))).splitlines() == [f"{low}\tbargain hunters", f"{high}\tbig spenders"]
    assert json.loads(ok(run("predict", model_id, str(new), "--json")))[0] == {"label": int(low),
                                                                             "label_name": "bargain hunters"}
    table = ok(run("models", "profile", model_id))
    # x is 1 in one cluster and 10 in the other: each is 0.91 sd (4.5 / std 4.93) from the mean 5.5.
    assert f'cluster {high} "big spenders" (50%): x +0.9 sd' in table
    assert "bargain hunters" in table and "-0.91" in table and "+0.91" in table
    doc = json.loads(ok(run("models", "profile", model_id, "--json")))
    assert doc["clusters"][int(low)]["features"][0] == {
        "name": "x", "type": "numeric", "mean": 1.0, "median": 1.0, "std": 0.0,
        "difference": pytest.approx(-4.5 / 4.929503017546495), "rank": 1}
    picture = points.with_name("profile.png")
    csv_text = ok(run("models", "profile", model_id, "--csv", "--plot", str(picture)))
    assert csv_text.startswith("cluster,name,size,share,feature,") and len(csv_text.splitlines()) == 5
    assert picture.read_bytes().startswith(b"\x89PNG")
    wrong = run("models", "name", model_id, "5=nobody")
    assert wrong.exit_code == 1 and "error 422" in wrong.stderr and "'5'" in wrong.stderr
    assert run("models", "name", model_id, "no-equals-sign").exit_code == 2


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


# -- bearer tokens -------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """``text`` with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def secured(settings: Settings) -> Iterator[tuple[httpx.Client, str]]:
    """A test client of an app that has an admin token, from another machine (only a token lets
    it in), and that token's secret."""
    app = build_app(settings)
    with app.test_client() as http:
        _, secret = app.service.access.create_token("admin")
        yield http, secret


@pytest.fixture
def srun(secured):
    """Run ``kmeans ARGS…`` against the secured app; ``token=`` adds --token, ``env=`` sets variables."""

    def invoke(*args: str, token: str | None = None, env: dict | None = None):
        options = ["--url", "http://testserver", *(["--token", token] if token is not None else [])]
        return CliRunner(env=env).invoke(cli, [*options, *args], obj={"http": secured[0]})

    return invoke


def test_token_option_is_sent_and_accepted(srun, secured):
    assert one_line(ok(srun("whoami", token=secured[1]))).startswith("admin in every project (token tok_")
    me = json.loads(ok(srun("whoami", "--json", token=secured[1])))
    assert (me["role"], me["project"], me["open"]) == ("admin", None, False)


def test_kmeans_token_comes_from_the_environment(srun, secured):
    assert json.loads(ok(srun("--json", "whoami", env={"KMEANS_TOKEN": secured[1]})))["role"] == "admin"
    assert "KMEANS_TOKEN" in ok(srun("--help"))


def test_no_token_exits_4_saying_how_to_give_one(srun):
    result = srun("datasets", "list")
    assert result.exit_code == EXIT_AUTH == 4 and result.stdout == ""
    message = one_line(result.stderr)
    assert message.startswith("error 401: this server requires a bearer token")
    assert "no token was given; pass --token or set KMEANS_TOKEN" in message


def test_an_unknown_token_exits_4_and_is_not_printed(srun):
    result = srun("whoami", token="kms_wrong-secret")
    assert result.exit_code == 4
    assert "error 401: the bearer token is not valid (the token was refused" in one_line(result.stderr)
    assert "wrong-secret" not in result.stderr + result.stdout


def test_a_token_that_cannot_be_sent_is_a_usage_error(srun):
    result = srun("whoami", env={"KMEANS_TOKEN": "kms_two words"})
    assert result.exit_code == 2 and "KMEANS_TOKEN" in result.stderr and "words" not in result.stderr


def test_a_guest_may_not_upload_exit_4(srun, secured, points: Path):
    guest = ok(srun("tokens", "create", "--role", "guest", token=secured[1])).strip()
    assert json.loads(ok(srun("datasets", "list", "--json", token=guest)))["total"] == 0
    result = srun("datasets", "upload", str(points), token=guest)
    assert result.exit_code == 4 and result.stdout == ""
    message = one_line(result.stderr)
    assert message.startswith("error 403: a guest token may not do this; it needs the contributor role")
    assert "kmeans whoami" in message


def test_projects_and_tokens_round_trip(srun, secured, points: Path):
    admin = {"KMEANS_TOKEN": secured[1]}
    assert "project team-a" in ok(srun("projects", "create", "team-a", "--description", "churn", env=admin))
    listed = ok(srun("projects", "list", env=admin))
    assert "team-a" in listed and "churn" in listed
    assert json.loads(ok(srun("projects", "show", "team-a", "--json", env=admin)))["description"] == "churn"

    # Plain: the secret alone on stdout (for TOKEN=$(kmeans tokens create …)), the rest on stderr.
    made = srun("tokens", "create", "--role", "contributor", "--project", "team-a", "--name", "ci",
                "--expires-in", "30d", env=admin)
    secret = ok(made).strip()
    assert secret.startswith("kms_") and "\n" not in secret
    assert "shown only this once" in one_line(made.stderr) and "contributor token tok_" in made.stderr
    # --json: the whole record, the secret in "token".
    record = json.loads(ok(srun("tokens", "create", "--role", "guest", "--project", "team-a", "--json", env=admin)))
    assert record["token"].startswith("kms_") and record["role"] == "guest" and record["status"] == "active"

    contributor = {"KMEANS_TOKEN": secret}
    assert one_line(ok(srun("whoami", env=contributor))).startswith("contributor in project team-a (token tok_")
    dataset = json.loads(ok(srun("datasets", "upload", str(points), "--json", env=contributor)))
    assert dataset["project"] == "team-a"
    assert json.loads(ok(srun("datasets", "list", "--project", "team-a", "--json", env=admin)))["total"] == 1
    assert json.loads(ok(srun("datasets", "list", "--project", "default", "--json", env=admin)))["total"] == 0
    refused = srun("datasets", "upload", str(points), "--project", "default", env=contributor)
    assert refused.exit_code == 4 and "error 403" in refused.stderr

    tokens = json.loads(ok(srun("tokens", "list", "--project", "team-a", "--json", env=admin)))
    assert tokens["total"] == 2 and all("token" not in t for t in tokens["items"])
    token_id = next(t["id"] for t in tokens["items"] if t["name"] == "ci")
    table = ok(srun("tokens", "list", env=admin))
    assert token_id in table and secret not in table and record["token"] not in table
    assert secret not in ok(srun("tokens", "show", token_id, env=admin))

    busy = srun("projects", "delete", "team-a", env=admin)
    assert busy.exit_code == 1 and busy.stderr.startswith("error 409:")
    assert f"token {token_id} is revoked" in ok(srun("tokens", "revoke", token_id, env=admin))
    after = srun("datasets", "list", env=contributor)
    assert after.exit_code == 4
    assert "error 401: the bearer token was revoked (the token was refused" in one_line(after.stderr)
    assert secret not in after.stderr

    ok(srun("tokens", "revoke", record["id"], env=admin))
    ok(srun("datasets", "delete", dataset["id"], env=admin))
    assert "deleted project team-a" in ok(srun("projects", "delete", "team-a", env=admin))


def test_durations():
    assert [parse_duration(t) for t in ("3600", "90m", "12h", "30d")] == [3600, 5400, 43200, 2592000]


def test_bad_token_options_are_usage_errors(srun, secured):
    assert srun("tokens", "create", "--role", "root", token=secured[1]).exit_code == 2
    assert srun("tokens", "create", "--role", "guest", "--expires-in", "soon", token=secured[1]).exit_code == 2


@pytest.mark.e2e
def test_a_real_server_with_a_token_from_create_token(tmp_path: Path):
    data_dir = tmp_path / "data"
    secret = subprocess.run(
        [sys.executable, "server.py", "create-token", "--role", "admin", "--data-dir", str(data_dir)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    port = free_port()
    cmd = [sys.executable, "server.py", "--port", str(port), "--data-dir", str(data_dir)]
    with running(cmd, data_dir, port, tmp_path / "server.log") as url:
        runner = CliRunner(env={"KMEANS_URL": url, "KMEANS_TOKEN": secret})
        result = runner.invoke(cli, ["whoami", "--json"], obj={})
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["role"] == "admin"
        refused = CliRunner(env={"KMEANS_URL": url}).invoke(cli, ["datasets", "list"], obj={})
        assert refused.exit_code == 4 and "error 401" in refused.stderr


def test_a_mixed_table_through_the_cli(run, tmp_path: Path):
    examples = ROOT / "examples"
    uploaded = run("datasets", "upload", str(examples / "customers.csv"), "--decimal", ",", "--id-column",
                   "customer_id", "--json")
    assert uploaded.exit_code == 0, uploaded.output
    dataset_id = json.loads(uploaded.stdout)["id"]
    shown = run("datasets", "show", dataset_id)
    assert shown.exit_code == 0 and "categorical" in shown.stdout and "customer_id" in shown.stdout
    columns = run("datasets", "columns", dataset_id)
    assert columns.exit_code == 0 and "spend" in columns.stdout and "median" in columns.stdout
    fitted = run("models", "fit", dataset_id, "--k", "2", "--param", "random_state=0", "--wait", "--json")
    assert fitted.exit_code == 0, fitted.output
    model_id = json.loads(fitted.stdout)["id"]
    predicted = run("predict", model_id, str(examples / "customers_new.csv"), "--decimal", ",")
    assert predicted.exit_code == 0, predicted.output
    assert [line.split("\t")[0] for line in predicted.stdout.split("\n") if line] == ["N001", "N002", "N003"]
    assert "'region'" in predicted.stderr
    as_json = json.loads(run("predict", model_id, str(examples / "customers_new.csv"), "--decimal", ",",
                             "--json").stdout)
    assert [p["id"] for p in as_json] == ["N001", "N002", "N003"]


def test_jobs_copy_pause_and_resume_commands(run, points: Path):
    dataset_id = upload(run, points)
    model = fit(run, dataset_id)
    copy = json.loads(ok(run("models", "copy", model["id"], "--param", "n_clusters=3", "--json")))
    assert copy["copied_from"] == model["id"] and copy["params"]["n_clusters"] == 3
    assert f"a copy of {model['id']}" in ok(run("models", "copy", model["id"]))
    listed = json.loads(ok(run("jobs", "--status", "succeeded", "--kind", "fit", "--json")))
    assert model["id"] in [j["id"] for j in listed["items"]]
    assert "jobs" in ok(run("jobs"))  # the live queue, as a table (maybe empty)
    paused = run("models", "pause", model["id"])  # a finished fit cannot be paused: the server's 409
    assert paused.exit_code != 0 and "succeeded" in paused.stderr
    resumed = run("models", "resume", model["id"])
    assert resumed.exit_code != 0 and "paused" in resumed.stderr


def test_sweeps_run_shows_the_per_k_table_and_the_choice(run, tmp_path: Path):
    from sklearn.datasets import make_blobs

    data, _ = make_blobs(600, centers=[(0, 0), (8, 0), (30, 0), (38, 0)], cluster_std=1.0, random_state=0)
    path = tmp_path / "pairs.csv"
    path.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in data))
    dataset_id = upload(run, path)
    shown = ok(run("sweeps", "run", dataset_id, "--k-min", "2", "--k-max", "8", "--param", "random_state=0"))
    assert "k=4 by consensus" in shown and "recommended" in shown and "runner-up" in shown and "votes:" in shown
    sweep = json.loads(ok(run("sweeps", "run", dataset_id, "--k-max", "5", "--stability-runs", "2", "--json")))
    assert sweep["status"] == "succeeded" and all(r["stability"]["runs"] == 2 for r in sweep["results"])
    again = json.loads(ok(run("sweeps", "show", sweep["id"], "--rule", "max_silhouette", "--json")))
    assert (again["recommended_k"], again["rule"]) == (2, "max_silhouette")
    assert "max_silhouette" in ok(run("sweeps", "show", sweep["id"], "--rule", "max_silhouette"))


def test_evaluations_and_compare_show_tables(run, tmp_path: Path):
    path = tmp_path / "grouped.csv"
    path.write_text("x,y,group\n1,2,left\n1,4,left\n1,0,left\n10,2,right\n10,4,right\n10,0,right\n2,2,left\n")
    dataset_id = upload(run, path)
    model = fit(run, dataset_id, "--param", 'features=["x", "y"]')
    shown = ok(run("evaluations", "run", model["id"], dataset_id, "--label-column", "group"))
    for text in ("mean squared distance", "cluster shares", "PSI of cluster shares", "KS statistic", "adjusted Rand",
                 "purity", "clusters x labels", "left", "right", "100.0%"):
        assert text in shown, text
    evaluation = json.loads(ok(run("evaluations", "run", model["id"], dataset_id, "--json")))
    assert evaluation["status"] == "succeeded" and evaluation["result"]["drift"]["psi"] == 0.0
    listed = ok(run("evaluations", "list", model["id"]))
    assert evaluation["id"] in listed and "evaluations 1–2 of 2" in listed
    assert "ok" in ok(run("evaluations", "show", model["id"], evaluation["id"]))
    missing = run("evaluations", "run", model["id"], dataset_id, "--label-column", "colour")
    assert missing.exit_code == 1 and "'colour'" in missing.stderr
    other = fit(run, dataset_id, "--param", 'features=["x", "y"]', "--param", "random_state=3")
    compared = ok(run("models", "compare", model["id"], other["id"]))
    assert "adjusted Rand" in compared and "matched clusters" in compared and "rows that changed cluster" in compared
    assert json.loads(ok(run("models", "compare", model["id"], other["id"], "--json")))["rows"] == 7
    ok(run("evaluations", "delete", model["id"], evaluation["id"]))
    assert run("evaluations", "show", model["id"], evaluation["id"]).exit_code == 1
