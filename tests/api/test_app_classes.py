"""Both connexion app classes (issue #15, item 5): KMEANS_APP / build_app(app_class=...), the same
answers from AsyncApp and FlaskApp, and examples/flask_mount.py (the API mounted beside a Flask
application's own route)."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import connexion
import numpy as np
import pytest
import yaml
from sklearn.cluster import KMeans
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app
from tests.conftest import EXAMPLES, ROOT, local_client, wait_for_model

PROBLEM = "application/problem+json"
POINTS = [[1.0, 1.0], [1.5, 2.0], [1.0, 0.5], [8.0, 8.0], [8.5, 9.0], [9.0, 8.0]]
# Differ between any two runs, whatever the app class: generated ids, clocks and durations.
VOLATILE_HEADERS = {"date", "location", "content-length", "x-model-id", "etag"}
IDS = re.compile(rb"\b(ds|m|sw|tok|prj)_[0-9a-f]{8,}\b")
TIMESTAMPS = re.compile(rb'"\d{4}-\d\d-\d\dT[0-9:.]+(\+00:00|Z)?"')
DURATIONS = re.compile(rb'"([a-z_]*seconds)":[0-9.e+-]+')
# How far a fit has got when its 202 is written depends on the job process, not on the app class.
UNDER_WAY = re.compile(
    rb'"(status":"(queued|running)|phase":"[a-z_]+|attempts":\d+|started_at":(null|"T")|progress":[0-9.]+)'
)


def load_example() -> ModuleType:
    """examples/flask_mount.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("flask_mount", EXAMPLES / "flask_mount.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kmeans_app_names_the_app_class_and_asyncapp_is_the_default(tmp_path: Path) -> None:
    assert Settings.from_env({}).app == "async"
    assert type(build_app(Settings.from_env({"KMEANS_DATA_DIR": str(tmp_path / "a")}))) is connexion.AsyncApp
    flask = Settings.from_env({"KMEANS_DATA_DIR": str(tmp_path / "f"), "KMEANS_APP": " Flask "})
    assert flask.app == "flask" and type(build_app(flask)) is connexion.FlaskApp
    # An explicit app_class wins over the setting.
    assert type(build_app(flask, app_class=connexion.AsyncApp)) is connexion.AsyncApp
    with pytest.raises(ValueError, match=r"KMEANS_APP must be one of async, flask, not 'wsgi'"):
        Settings.from_env({"KMEANS_APP": "wsgi"})


def normalized(response: Any, under_way: bool = False) -> tuple[int, dict[str, str], bytes]:
    """What a client sees of a response, without what differs between any two runs (and, for the
    answer to a fit that is ``under_way``, without how far its job process has got)."""
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}
    body = DURATIONS.sub(rb'"\1":0', TIMESTAMPS.sub(b'"T"', IDS.sub(rb"\1_ID", response.content)))
    if under_way:
        body = UNDER_WAY.sub(b'"under way"', body)
    return response.status_code, headers, body


def session(client: TestClient, remote: TestClient) -> Iterator[tuple[str, Any]]:
    """One user's session over every kind of answer: JSON, CSV in and out, streamed labels, SSE,
    problems (400, 404, 405, 409, 413, 415, 422, 401, 403), the served spec and Swagger UI."""
    yield "ping", client.get("/kmeans/ping")
    made = client.post("/kmeans/datasets", json={"data": POINTS, "columns": ["x", "y"]})
    yield "json dataset", made
    dataset = made.json()["id"]
    yield "raw csv dataset", client.post(
        "/kmeans/datasets?name=raw", content=b"x,y\n1,1\n2,2\n9,9\n", headers={"content-type": "text/csv"}
    )
    yield "multipart dataset", client.post("/kmeans/datasets", files={"file": ("m.csv", b"a\n1\n2\n", "text/csv")})
    yield "rows as csv", client.get(f"/kmeans/datasets/{dataset}/rows", headers={"accept": "text/csv"})
    yield "rows as json", client.get(f"/kmeans/datasets/{dataset}/rows?limit=2")
    fit = client.post("/kmeans/models", json={"dataset_id": dataset, "params": {"n_clusters": 2, "random_state": 0}})
    yield "fit", fit
    model = fit.json()["id"]
    assert wait_for_model(client, model)["status"] == "succeeded"
    yield "events of a finished fit", client.get(f"/kmeans/models/{model}/events")
    yield "labels csv", client.get(f"/kmeans/models/{model}/labels", headers={"accept": "text/csv"})
    yield "labels json", client.get(f"/kmeans/models/{model}/labels")
    yield "centers csv", client.get(f"/kmeans/models/{model}/centers", headers={"accept": "text/csv"})
    yield "predict json", client.post(f"/kmeans/models/{model}/predictions", json={"data": [[0, 0], [9, 9]]})
    yield "predict csv", client.post(
        f"/kmeans/models/{model}/predictions", content=b"x,y\n0,0\n9,9\n", headers={"content-type": "text/csv"}
    )
    throwaway = client.post("/kmeans/datasets", json={"data": [[1.0], [2.0]]}).json()["id"]
    yield "delete 204", client.delete(f"/kmeans/datasets/{throwaway}")
    yield "400 unknown field", client.post("/kmeans/datasets", json={"data": [[1.0]], "nope": 1})
    yield "400 bad query", client.get("/kmeans/datasets?limit=0")
    yield "404 unknown model", client.get("/kmeans/models/m_0000000000000000")
    yield "404 unknown path", client.get("/kmeans/nothing/here")
    yield "404 outside the api", client.get("/elsewhere")
    yield "405 with Allow", client.put("/kmeans/ping")
    yield "409 cancel a finished fit", client.post(f"/kmeans/models/{model}/cancel")
    yield "413", client.post("/kmeans/datasets", content=b"1\n" * 600_000, headers={"content-type": "text/csv"})
    yield "415", client.post("/kmeans/datasets", content=b"1\n", headers={"content-type": "text/plain"})
    yield "415 content coding", client.post(
        "/kmeans/datasets", content=b"1\n", headers={"content-type": "text/csv", "content-encoding": "gzip"}
    )
    yield "422 naming the cell", client.post(
        f"/kmeans/models/{model}/predictions", content=b"x,y\n1,2\n3,z\n", headers={"content-type": "text/csv"}
    )
    yield "401 malformed token", client.get("/kmeans/datasets", headers={"authorization": "Basic abc"})
    yield "403 remote without tokens", remote.get("/kmeans/datasets")
    yield "served spec", client.get("/kmeans/openapi.json")
    yield "served yaml", client.get("/kmeans/openapi.yaml")
    yield "swagger ui", client.get("/kmeans/ui/")


def test_asyncapp_and_flaskapp_answer_every_kind_of_request_the_same(tmp_path: Path) -> None:
    answers: dict[str, list[tuple[str, tuple[int, dict[str, str], bytes]]]] = {}
    for name, cls in (("async", connexion.AsyncApp), ("flask", connexion.FlaskApp)):
        settings = Settings(data_dir=tmp_path / name, max_upload_bytes=1_000_000, max_concurrent_fits=1)
        app = build_app(settings, cls)
        assert type(app) is cls
        with local_client(app) as client, app.test_client(client=("192.0.2.7", 40000)) as remote:
            answers[name] = [(what, normalized(r, what == "fit")) for what, r in session(client, remote)]
    assert [what for what, _ in answers["async"]] == [what for what, _ in answers["flask"]]
    for (what, on_async), (_, on_flask) in zip(answers["async"], answers["flask"], strict=True):
        assert on_flask == on_async, what
    seen = dict(answers["flask"])
    # The answers compared are the real ones, not two identical failures.
    assert seen["labels csv"][0] == 200 and seen["labels csv"][1]["content-type"].startswith("text/csv")
    assert seen["events of a finished fit"][1]["content-type"].startswith("text/event-stream")
    assert b"event: model" in seen["events of a finished fit"][2] and b'"status":"succeeded"' in seen[
        "events of a finished fit"
    ][2]
    assert seen["delete 204"][0] == 204 and "content-type" not in seen["delete 204"][1]
    for what, status in (
        ("400 unknown field", 400),
        ("404 unknown path", 404),
        ("404 outside the api", 404),
        ("405 with Allow", 405),
        ("409 cancel a finished fit", 409),
        ("413", 413),
        ("415", 415),
        ("415 content coding", 415),
        ("422 naming the cell", 422),
        ("401 malformed token", 401),
        ("403 remote without tokens", 403),
    ):
        assert seen[what][0] == status and seen[what][1]["content-type"] == PROBLEM, what
        assert json.loads(seen[what][2])["detail"], what
    assert seen["405 with Allow"][1]["allow"] == "GET"
    assert json.loads(seen["422 naming the cell"][2])["detail"] == "row 3, column 2: 'z' is not a number"
    assert json.loads(seen["served spec"][2])["paths"].keys() == yaml.safe_load((ROOT / "api.yaml").read_text())[
        "paths"
    ].keys()
    assert seen["swagger ui"][0] == 200 and b"swagger-ui" in seen["swagger ui"][2]


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Any, TestClient]]:
    """examples/flask_mount.py's app on a fresh data dir, and a local client of it."""
    app = load_example().create_app(Settings(data_dir=tmp_path / "data", max_concurrent_fits=1))
    with local_client(app) as client:
        yield app, client


def test_the_mount_example_serves_its_flask_route_beside_the_whole_api(mounted: tuple[Any, TestClient]) -> None:
    app, client = mounted
    assert type(app) is connexion.FlaskApp and "shop" in app.app.blueprints
    own = client.get("/shop/status")
    assert own.status_code == 200 and own.json() == {
        "app": "shop",
        "served_by": "flask",
        "kmeans_api": "/kmeans",
        "kmeans_docs": "/kmeans/ui/",
    }
    assert client.get("/shop/nothing").headers["content-type"] == PROBLEM

    # The API beside it: a JSON dataset, a fit, its labels and a prediction, as scikit-learn has them.
    dataset = client.post("/kmeans/datasets", json={"data": POINTS}).json()
    params = {"n_clusters": 2, "random_state": 0, "n_init": 1}
    model = client.post("/kmeans/models", json={"dataset_id": dataset["id"], "params": params}).json()
    assert wait_for_model(client, model["id"])["status"] == "succeeded"
    expected = KMeans(**params).fit(np.array(POINTS))
    labels = client.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]
    assert labels == expected.labels_.tolist()
    predicted = client.post(f"/kmeans/models/{model['id']}/predictions", json={"data": [[0, 0], [9, 9]]})
    assert predicted.json()["labels"] == expected.predict(np.array([[0.0, 0.0], [9.0, 9.0]])).tolist()
    centers = np.array(client.get(f"/kmeans/models/{model['id']}/centers").json()["centers"])
    np.testing.assert_allclose(centers, expected.cluster_centers_, rtol=1e-9)
    assert client.get("/kmeans/ui/").status_code == 200
    refused = client.post("/kmeans/models", json={"dataset_id": dataset["id"], "params": {"n_clusters": 0}})
    assert refused.status_code == 400 and "n_clusters" in refused.json()["detail"]
