"""The contract from outside, against a real ``python server.py``: a client generated from
api.yaml, the SDK and generated-client examples, and the installed ``kmeans`` console script;
also against a server that requires tokens (KMEANS_AUTH=required), where the generated
``AuthenticatedClient`` sends api.yaml's bearerAuth token and no token is a clear 401."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, free_port, running
from tests.e2e.test_auth_e2e import create_token

pytestmark = pytest.mark.e2e
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded server (the README's command) for the whole module."""
    tmp = tmp_path_factory.mktemp("contract-e2e")
    port = free_port()
    cmd = [sys.executable, "server.py", "--port", str(port), "--data-dir", str(tmp / "data")]
    with running(cmd, tmp / "data", port, tmp / "server.log") as url:
        yield str(url)


@pytest.fixture(scope="module")
def closed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An embedded server that requires tokens, and a contributor token for it (from the README's command)."""
    tmp = tmp_path_factory.mktemp("contract-e2e-auth")
    data_dir = tmp / "data"
    token = create_token(data_dir, "--role", "contributor", "--name", "generated client")
    port = free_port()
    cmd = [sys.executable, "server.py", "--port", str(port), "--data-dir", str(data_dir)]
    with running(cmd, data_dir, port, tmp / "server.log", env={"KMEANS_AUTH": "required"}) as url:
        yield str(url), token


def run_example(example: str, url: str, token: str | None = None) -> subprocess.CompletedProcess:
    """Run an example as a user would: the server in KMEANS_URL, the token (if any) in KMEANS_TOKEN."""
    env = {key: value for key, value in os.environ.items() if key != "KMEANS_TOKEN"}
    env["KMEANS_URL"] = url
    if token is not None:
        env["KMEANS_TOKEN"] = token
    return subprocess.run(
        [sys.executable, str(EXAMPLES / example)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The client openapi-python-client generates from api.yaml, imported."""
    example = load_example("generated_client")
    out = tmp_path_factory.mktemp("generated")
    try:
        example.generate(out)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"openapi-python-client failed:\n{exc.stdout}\n{exc.stderr}")
    sys.path.insert(0, str(out))
    try:
        yield example
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == example.PACKAGE or m.startswith(f"{example.PACKAGE}.")]:
            del sys.modules[name]


def test_generation_is_clean_of_warnings(tmp_path: Path):
    done = subprocess.run(
        ["openapi-python-client", "generate", "--path", str(ROOT / "api.yaml"),
         "--config", str(EXAMPLES / "openapi-python-client.yaml"), "--meta", "none",
         "--output-path", str(tmp_path / "client")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


def test_generated_client_full_flow(generated, server: str, capsys):
    seen = generated.flow(server)
    assert seen["dataset"].rows == 6 and seen["dataset"].name == "points"
    assert seen["model"].status.value == "succeeded"
    labels = seen["labels"]
    assert len(labels) == 6 and labels[0] == labels[1] == labels[2] != labels[3]
    assert sorted(seen["centers"].centers) == [[1.0, 2.0], [10.0, 2.0]]
    # (0, 0) is nearest to (1, 0), row 3; (12, 3) to (10, 2), row 4.
    assert seen["predicted"] == [labels[2], labels[3]]
    assert "predictions for (0, 0) and (12, 3)" in capsys.readouterr().out


def test_generated_client_csv_bodies_classic_endpoints_and_problems(generated, server: str):
    from kmeans_api_client import Client
    from kmeans_api_client.api.classic import fit, upload
    from kmeans_api_client.api.datasets import create_dataset, get_dataset
    from kmeans_api_client.api.models import create_model, get_model, predict_with_model
    from kmeans_api_client.models import FitRequest, ModelInput, ModelParams, Problem, UploadBody
    from kmeans_api_client.types import File

    client = Client(base_url=f"{server}/kmeans", raise_on_unexpected_status=True, timeout=30)
    # A raw text/csv body (the spec's binary CSV schema, with the generator's content type override).
    dataset = create_dataset.sync(client=client, body=File(payload=io.BytesIO(b"0,0\n0,1\n9,9\n9,8\n")), name="raw")
    assert (dataset.name, dataset.rows) == ("raw", 4)
    model = create_model.sync(client=client, body=ModelInput(dataset_id=dataset.id, params=ModelParams(n_clusters=2)))
    deadline = time.monotonic() + 60
    while model.status.value in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        model = get_model.sync(model.id, client=client)
    assert model.status.value == "succeeded", model.error
    predicted = predict_with_model.sync(model.id, client=client, body=File(payload=io.BytesIO(b"0,0\n9,9\n")))
    assert len(predicted.labels) == 2 and predicted.labels[0] != predicted.labels[1]

    with open(EXAMPLES / "model.csv", "rb") as handle:
        job = upload.sync(client=client, body=UploadBody(file=File(payload=handle, file_name="model.csv")))
    request = FitRequest(job_id=job.job_id, model_params=ModelParams(n_clusters=3))
    labels = fit.sync(client=client, body=request)  # text/csv, as in the original example
    assert len(labels.payload.read().split()) == 6

    missing = get_dataset.sync("ds_0000000000000000", client=client)
    assert isinstance(missing, Problem) and missing.status == 404
    assert missing.detail == "no dataset with id ds_0000000000000000"


@pytest.mark.parametrize("example", ["sdk_flow.py", "generated_client.py"])
def test_examples_run_against_a_real_server(server: str, example: str):
    done = run_example(example, server)
    assert done.returncode == 0, f"{example}:\n{done.stdout}\n{done.stderr}"
    assert "predictions for (0, 0) and (12, 3): [" in done.stdout


@pytest.mark.parametrize("example", ["sdk_flow.py", "generated_client.py"])
def test_examples_run_with_a_token_against_a_server_that_requires_one(closed_server, example: str):
    url, token = closed_server
    done = run_example(example, url, token)
    assert done.returncode == 0, f"{example}:\n{done.stdout}\n{done.stderr}"
    assert "predictions for (0, 0) and (12, 3): [" in done.stdout
    assert "contributor" in done.stdout and "default" in done.stdout  # whoami: the token's role and project
    assert token not in done.stdout + done.stderr


def test_generated_client_example_without_a_token_stops_at_a_clear_401(closed_server):
    url, _ = closed_server
    done = run_example("generated_client.py", url)
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    assert "service ok" in done.stdout  # /ping has security: [] ...
    assert "dataset" not in done.stdout  # ... nothing after it ran
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error 401 Unauthorized: "), done.stderr


def test_generated_authenticated_client_sends_the_bearer_token(generated, closed_server):
    from kmeans_api_client import AuthenticatedClient, Client
    from kmeans_api_client.api.access import whoami
    from kmeans_api_client.api.datasets import list_datasets
    from kmeans_api_client.models import Problem

    url, token = closed_server
    client = generated.make_client(url, token)
    assert isinstance(client, AuthenticatedClient)
    seen = generated.flow(url, token=token)
    assert seen["model"].status.value == "succeeded" and seen["predicted"] == [seen["labels"][2], seen["labels"][3]]
    me = whoami.sync(client=client)
    assert (me.role.value, me.project, me.open_) == ("contributor", "default", False)

    # Without a token (a plain Client), or with a wrong one: 401 problems, raised clearly by the example.
    plain = generated.make_client(url)
    assert type(plain) is Client
    for client in (plain, generated.make_client(url, "kms_not-a-token")):
        refused = list_datasets.sync_detailed(client=client)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert isinstance(refused.parsed, Problem) and refused.parsed.status == 401
        with pytest.raises(generated.ProblemAnswer, match=r"^error 401 Unauthorized: ") as raised:
            generated.flow(url, token=client.token if isinstance(client, AuthenticatedClient) else None)
        assert raised.value.status == 401


def console_script() -> str:
    """The installed ``kmeans`` script (``pip install -r requirements.txt`` installs it)."""
    beside = Path(sys.executable).with_name("kmeans")
    found = str(beside) if beside.exists() else shutil.which("kmeans")
    assert found, "no kmeans console script: run `pip install -r requirements.txt` (it installs -e .)"
    return found


def kmeans(*args: str, url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KMEANS_URL": url}
    return subprocess.run([console_script(), *args], env=env, capture_output=True, text=True, timeout=120)


def test_console_script_runs_the_flow(server: str):
    assert kmeans("--help", url=server).returncode == 0
    uploaded = kmeans("datasets", "upload", str(EXAMPLES / "model.csv"), "--json", url=server)
    assert uploaded.returncode == 0, uploaded.stderr
    dataset_id = json.loads(uploaded.stdout)["id"]
    fitted = kmeans("models", "fit", dataset_id, "--k", "2", "--param", "random_state=0", "--wait", "--json",
                    url=server)
    assert fitted.returncode == 0, fitted.stderr
    model = json.loads(fitted.stdout)
    assert model["status"] == "succeeded"
    predicted = kmeans("predict", model["id"], str(EXAMPLES / "predict.csv"), url=server)
    assert predicted.returncode == 0 and len(predicted.stdout.split()) == 2
    listed = kmeans("models", "list", url=server)
    assert model["id"] in listed.stdout and "succeeded" in listed.stdout

    missing = kmeans("models", "show", "m_0000000000000000", url=server)
    assert missing.returncode == 1 and missing.stderr.strip() == "error 404: no model with id m_0000000000000000"
    assert kmeans("models", "fit", url=server).returncode == 2


def test_console_script_exits_3_when_the_server_is_down():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        done = kmeans("datasets", "list", url=url)
    assert done.returncode == 3 and f"cannot connect to {url}" in done.stderr
