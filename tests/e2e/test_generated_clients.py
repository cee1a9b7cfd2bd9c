"""Clients generated from the spec a real server serves, with no config and no hand edits (issue 15,
item 4): openapi-python-client, openapi-generator ``-g python`` and @hey-api/openapi-ts (run by node),
each generating from ``GET /kmeans/openapi.json`` of a ``python server.py`` on 127.0.0.1, then running
the whole flow of tests/e2e/clients/: a JSON dataset, a fit with each method (k-means with lloyd and
with elkan, minibatch, bisecting), waiting for it, predictions, labels, centers, the plot's PNG bytes,
and the classic upload, fit and predict. Labels and centers are checked against scikit-learn's KMeans
on the same data; the plots against the PNG the server sends; each generator's warnings against the
list the README gives reasons for."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from tests.e2e.conftest import ROOT, free_port, running

pytestmark = pytest.mark.e2e
CLIENTS = Path(__file__).resolve().parent / "clients"
TS = CLIENTS / "ts"
DATA = json.loads((CLIENTS / "flow_data.json").read_text())
EXAMPLES = ROOT / "examples"
# Generation, and a flow of four fits, each take seconds; these are generous bounds for a busy machine.
GENERATE_TIMEOUT = 100
FLOW_TIMEOUT = 100

# openapi-python-client reads only JSON, multipart and octet-stream request bodies: the raw table
# bodies of these operations (for curl) are skipped, the JSON and multipart ones generated (README).
PYTHON_CLIENT_WARNINGS = {
    (operation, media_type)
    for operation in ("POST /datasets", "POST /models/{model_id}/predictions")
    for media_type in ("application/vnd.apache.parquet", "application/vnd.apache.arrow.file",
                       "application/vnd.apache.arrow.stream", "text/csv")
} | {("POST /models/{model_id}/data", "text/csv")}
# openapi-generator 7.x logs this while resolving references; it names no schema (README).
OPENAPI_GENERATOR_WARNINGS = {"o.o.codegen.utils.ModelUtils - Failed to get the schema name: null"}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``python server.py`` (the README's command) for every generator."""
    tmp = tmp_path_factory.mktemp("generated-clients")
    port = free_port()
    cmd = [sys.executable, "server.py", "--port", str(port), "--data-dir", str(tmp / "data")]
    with running(cmd, tmp / "data", port, tmp / "server.log") as url:
        yield str(url)


def spec_url(server: str) -> str:
    """What a new user generates from: the spec the running server serves."""
    return f"{server}/kmeans/openapi.json"


def generate(cmd: list[str], cwd: Path) -> str:
    """Run a generator; its output (stdout and stderr), or the test fails with it."""
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=GENERATE_TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-5000:]}"
    return output


def tool(name: str) -> str:
    """A command installed beside this Python (requirements-dev.txt) or on PATH, else skip saying why."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed: pip install -r requirements-dev.txt")
    return found


@pytest.fixture(scope="session")
def python_client(server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """openapi-python-client's package (``kmeans_service_client``) and what the generator printed."""
    out = tmp_path_factory.mktemp("openapi-python-client")
    output = generate([tool("openapi-python-client"), "generate", "--url", spec_url(server), "--meta", "none",
                       "--output-path", str(out / "kmeans_service_client")], out)
    return out, output


@pytest.fixture(scope="session")
def openapi_generator(server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """openapi-generator's ``-g python`` project (package ``openapi_client``) and what it printed."""
    command = tool("openapi-generator-cli")
    if shutil.which("java") is None:
        pytest.skip("openapi-generator-cli runs its bundled jar with java, and there is no java on PATH")
    out = tmp_path_factory.mktemp("openapi-generator")
    output = generate([command, "generate", "-i", spec_url(server), "-g", "python", "-o", str(out)], out)
    return out, output


def npm_tools() -> Path:
    """tests/e2e/clients/ts/node_modules, installed from its package-lock.json when missing (.ci/run does too)."""
    bins = TS / "node_modules" / ".bin"
    if (bins / "openapi-ts").exists() and (bins / "tsc").exists():
        return bins
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("node and npm are needed for the @hey-api/openapi-ts client, and are not on PATH")
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=TS, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        pytest.skip(f"npm ci could not install @hey-api/openapi-ts and TypeScript:\n{done.stderr[-2000:]}")
    return bins


@pytest.fixture(scope="session")
def ts_client(server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """@hey-api/openapi-ts's client with the flow beside it, compiled by TypeScript 5 for node."""
    bins = npm_tools()
    out = tmp_path_factory.mktemp("hey-api")
    output = generate([str(bins / "openapi-ts"), "--input", spec_url(server), "--output", "client"], out)
    shutil.copy(TS / "flow.ts", out / "flow.ts")
    # Compiler options on the command line: the generated code gets no config of its own.
    generate([str(bins / "tsc"), "--strict", "--target", "es2022", "--module", "commonjs", "--moduleResolution",
              "node10", "--lib", "es2022,dom", "--types", "node", "--typeRoots", str(TS / "node_modules" / "@types"),
              "--skipLibCheck", "--outDir", "out", "flow.ts"], out)
    return out, output


def run_flow(cmd: list[str]) -> dict:
    """Run a flow script as its own process; what it printed (JSON), or the test fails with its output."""
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=FLOW_TIMEOUT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads(done.stdout)


def check_flow(seen: dict, server: str) -> None:
    """What a flow saw is what scikit-learn computes on the same data, and the plots are the server's PNGs."""
    points, predict = np.array(DATA["points"], dtype=float), np.array(DATA["predict"], dtype=float)
    assert seen["dataset"]["rows"] == len(points) and seen["dataset"]["columns"] == DATA["columns"]
    reference = KMeans(n_clusters=DATA["n_clusters"], n_init=10, random_state=0).fit(points)
    assert set(seen["fits"]) == set(DATA["fits"])
    for name, fit in seen["fits"].items():
        assert (fit["status"], fit["method"]) == ("succeeded", DATA["fits"][name]["method"]), name
        labels = np.array(fit["labels"])
        assert adjusted_rand_score(reference.labels_, labels) == 1.0, (name, fit["labels"])
        ours = {int(theirs): int(labels[reference.labels_ == theirs][0]) for theirs in range(DATA["n_clusters"])}
        centers = np.array(fit["centers"])
        for theirs, mine in ours.items():
            # MiniBatchKMeans' centers are running means of its batches: within each blob, not on its mean.
            tolerance = 0.5 if fit["method"] == "minibatch" else 1e-9
            assert np.abs(centers[mine] - reference.cluster_centers_[theirs]).max() <= tolerance, (name, centers)
        assert fit["predicted"] == [ours[int(t)] for t in reference.predict(predict)], name
        png = httpx.get(f"{server}/kmeans/models/{fit['id']}/plot.png", timeout=30).content
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert fit["plot_sha256"] == hashlib.sha256(png).hexdigest(), name

    classic = seen["classic"]
    assert isinstance(classic["job_id"], int)
    labels = classic["labels"] if isinstance(classic["labels"], list) else [int(v) for v in classic["labels"].split()]
    predicted = classic["predicted"]
    predicted = predicted if isinstance(predicted, list) else [int(v) for v in predicted.split()]
    rows = np.loadtxt(EXAMPLES / "model.csv", delimiter=",")
    reference = KMeans(n_clusters=DATA["classic_n_clusters"], n_init=10, random_state=0).fit(rows)
    assert len(labels) == len(rows) and adjusted_rand_score(reference.labels_, labels) == 1.0, labels
    ours = {int(t): labels[list(reference.labels_).index(t)] for t in set(reference.labels_)}
    new = np.loadtxt(EXAMPLES / "predict.csv", delimiter=",")
    assert predicted == [ours[int(t)] for t in reference.predict(new)]


def test_openapi_python_client_full_flow(python_client, server: str):
    out, _ = python_client
    check_flow(run_flow([sys.executable, str(CLIENTS / "python_client_flow.py"), str(out), server]), server)


def test_openapi_generator_python_full_flow(openapi_generator, server: str):
    out, _ = openapi_generator
    seen = run_flow([sys.executable, str(CLIENTS / "openapi_generator_flow.py"), str(out), server])
    # Its Configuration() defaults to the spec's first server, which the server filled in with its address.
    assert seen["host"] == f"{server}/kmeans"
    check_flow(seen, server)


def test_hey_api_typescript_full_flow(ts_client, server: str):
    out, _ = ts_client
    node = shutil.which("node")
    check_flow(run_flow([node, str(out / "out" / "flow.js"), server, str(CLIENTS / "flow_data.json"),
                         str(EXAMPLES)]), server)


def test_openapi_python_client_warns_only_of_the_raw_table_bodies(python_client):
    _, output = python_client
    warned, details = set(), 0
    operation = None
    for line in output.splitlines():
        if match := re.match(r"WARNING parsing (\w+ \S+) within", line):
            operation = match.group(1)
        elif match := re.match(r"Unsupported content type (\S+)$", line):
            warned.add((operation, match.group(1)))
            details += 1
    # Each warning is one of these (a warning of another kind has a detail line this does not parse).
    assert output.count("WARNING parsing") == details, output
    assert warned == PYTHON_CLIENT_WARNINGS, output


def test_openapi_generator_accepts_the_spec_and_warns_only_as_documented(openapi_generator):
    _, output = openapi_generator
    assert "SpecValidationException" not in output and "ERROR" not in output, output
    warned = {re.sub(r"^\[main\] WARN\s+", "", line).strip() for line in output.splitlines() if "WARN" in line}
    assert warned <= OPENAPI_GENERATOR_WARNINGS, output


def test_hey_api_generates_without_warnings(ts_client):
    _, output = ts_client
    assert not re.search(r"warn|error", output, re.IGNORECASE), output
