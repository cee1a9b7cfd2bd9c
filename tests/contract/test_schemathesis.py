"""Property-based tests of every operation with schemathesis: generated requests, valid and
not, must never get a 5xx, and every answer must be one the spec documents (status code,
content type, headers, body schema).

The app runs in-process over a private data dir that holds one dataset and one fitted model,
so that generated ids sometimes exist. Runs are seeded and derandomized: CI sees the same
requests every time.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import allow_header_conformance
from schemathesis.transport.serialization import serialize_binary

from kmeans.access import Access
from kmeans.config import Settings
from kmeans.store import Store
from server import build_app
from tests.conftest import local_client, wait_for_model, wait_until_done

DATA_DIR = Path(tempfile.mkdtemp(prefix="kmeans-schemathesis-"))
# The contract as deployed: tokens required. schemathesis also sends requests without the token
# (its ignored_auth check) and expects them refused.
_, ADMIN_TOKEN = Access(Store(DATA_DIR)).create_token("admin")
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
APP = build_app(Settings(data_dir=DATA_DIR, max_upload_bytes=1_000_000, max_concurrent_fits=2))
CONFIG = schemathesis.Config.from_str(
    """
[checks.positive_data_acceptance]
# A request the schema allows can still hold data that cannot be clustered: ragged rows, CSV
# that is not numeric, n_clusters above the row count. The spec documents those as 422.
expected-statuses = ["2xx", "404", "409", "422"]

[checks.negative_data_rejection]
# An invalid request may also be too large (text cells of up to 10,000 characters): the body
# limit answers it 413 before the schema is checked.
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

[[operations]]
# A well-formed sign-in, refresh or sign-out with a made-up name, password or refresh token is
# refused (401; 429 after repeated failed sign-ins from this client), as it must be.
include-operation-id = ["sign_in", "refresh_token", "sign_out"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "429"]

[[operations]]
# The admin token of these tests has no password to change (403); a user's wrong one is 403 too.
include-operation-id = ["change_password"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "403", "422", "429"]
"""
)
@schemathesis.serializer(
    "application/vnd.apache.parquet", "application/vnd.apache.arrow.file", "application/vnd.apache.arrow.stream"
)
def columnar_bytes(ctx, value) -> bytes:
    """Generated bodies of the binary table types, sent as the bytes they are (the server must
    refuse what is not a Parquet or Arrow file with a 422, never a 500)."""
    return serialize_binary(value)


schema = schemathesis.openapi.from_asgi("/kmeans/openapi.json", APP, config=CONFIG).exclude(
    # Server-Sent Events stream until the fit ends; they are not a request/response contract.
    path_regex=r"/events$"
)
SEEDED: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def running_app() -> Iterator[None]:
    """Start the app's lifespan (fit workers) and seed an upload (job 0), a dataset and a fitted model."""
    points = [[x, y] for x in (1, 10, 20) for y in (0, 2, 4, 6)]
    with local_client(APP) as client:
        client.headers.update(AUTH)
        csv = "\n".join(f"{x},{y}" for x, y in points).encode()
        assert client.post("/kmeans/upload", files={"file": ("seed.csv", csv, "text/csv")}).json()["job_id"] == 0
        created = client.post("/kmeans/datasets", json={"data": points, "name": "seed"})
        SEEDED["dataset_id"] = created.json()["id"]
        queued = client.post("/kmeans/models", json={"dataset_id": SEEDED["dataset_id"], "params": {"n_clusters": 3}})
        SEEDED["model_id"] = queued.json()["id"]
        assert wait_for_model(client, SEEDED["model_id"])["status"] == "succeeded"
        assert client.post("/kmeans/fit", json={"job_id": 0}).status_code == 200
        evaluations = f"/kmeans/models/{SEEDED['model_id']}/evaluations"
        evaluation = client.post(evaluations, json={"dataset_id": SEEDED["dataset_id"]}).json()
        SEEDED["evaluation_id"] = evaluation["id"]
        assert wait_until_done(client, f"{evaluations}/{evaluation['id']}")["status"] == "succeeded"
        yield
    shutil.rmtree(DATA_DIR, ignore_errors=True)


def aim(value: object) -> bool:
    """Whether to replace a generated id with a seeded one: about every other time, deterministically,
    and only ids the schema allows (an invalid one stays, for the negative cases)."""
    if isinstance(value, str):
        valid = 1 <= len(value) <= 64 and "\n" not in value
    else:
        valid = type(value) is int and 0 <= value <= 2**53 - 1
    return valid and len(str(value)) % 2 == 0


@schema.hook
def map_path_parameters(context, path_parameters: dict | None) -> dict | None:
    """Aim generated ids at the seeded dataset or model, so real resources get tested too."""
    if path_parameters is None or context.operation.method.upper() == "DELETE":
        return path_parameters  # the seeded resources stay for the operations tested after DELETE
    for name in ("dataset_id", "model_id", "evaluation_id"):
        if name in path_parameters and aim(path_parameters[name]):
            path_parameters[name] = SEEDED[name]
    return path_parameters


@schema.hook
def map_body(context, body: object) -> object:
    """Likewise for the ids in bodies: the seeded dataset for fits, upload 0 for the classic flow."""
    if isinstance(body, dict):
        if aim(body.get("dataset_id")):
            body["dataset_id"] = SEEDED["dataset_id"]
        if aim(body.get("job_id")):
            body["job_id"] = 0
        if aim(body.get("other_model_id")):
            body["other_model_id"] = SEEDED["model_id"]
    return body


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_keeps_the_contract(case: Case):
    """Valid and invalid requests (schemathesis generates both): no 5xx, every answer as documented,
    invalid data refused with a 4xx."""
    case.call_and_validate(
        headers=AUTH,
        # connexion routes each method of a path separately, so a 405 names only one of the
        # path's methods in Allow: see test_405_allow_lists_every_method_of_the_path below.
        excluded_checks=[allow_header_conformance],
    )

