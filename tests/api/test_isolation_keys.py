"""Isolation through secondary keys (issue #14, item 3): every lookup by a key that is not the
resource's own id — a classic ``job_id`` (``/fit``, ``/predict``), an ``Idempotency-Key``, a model
``version``, a ``dataset_id`` filter or body field, a project name — answers a caller of team-b who
uses team-a's key exactly as it answers a key that never existed: same status, same headers, the
same problem document byte for byte once the key itself is swapped, and nothing naming a team-a id.

team-a's keys are taken in every state they can be in (a classic upload fitted, not fitted, its
dataset deleted with and without a model left, its model deleted; versions that exist and that do
not), since a leak usually hides in a state the first check forgot.

Only ``connexion.AsyncApp`` is covered: it is the one app class ``server.build_app`` (and so
tests/conftest.py) makes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kmeans.config import Settings
from server import build_app
from tests.api.test_access_matrix import (
    BASE,
    MODEL_CSV,
    POINTS,
    PREDICT_CSV,
    PROBLEM,
    World,
    make_tokens,
    team_a_ids_in,
)
from tests.conftest import local_client

MISSING_JOB = 987_654
MISSING_MODEL = "m_0000000000000000"
MISSING_DATASET = "ds_0000000000000000"
MISSING_PROJECT = "no-such-project"
MISSING_VERSION = 99
# Headers that differ between any two answers.
VOLATILE = {"date", "content-length"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, app_class: type) -> Iterator[World]:
    """team-a (contributor "contributor") and team-b (contributor "other"), and team-a's keys in every state."""
    data_dir = tmp_path_factory.mktemp("isolation") / "data"
    app = build_app(Settings(data_dir=data_dir, max_upload_bytes=1_000_000, max_concurrent_fits=2), app_class)
    service = app.service
    secrets: dict[str, str] = {}
    token_ids: dict[str, str] = {}
    record, secrets["admin"] = service.access.create_token("admin")
    token_ids["admin"] = record["id"]
    service.access.create_project("team-a")
    service.access.create_project("team-b")
    make_tokens(service.access, secrets, token_ids)
    with local_client(app) as client:
        w = World(client, service, secrets, token_ids, {}, set(), set(secrets.values()))
        a = w.headers("contributor")

        def upload(name: str, fitted: bool) -> dict[str, Any]:
            made = client.post(f"{BASE}/upload", files={"file": (name, MODEL_CSV, "text/csv")}, headers=a)
            assert made.status_code == 200, made.text
            body = made.json()
            w.team_a.add(body["dataset_id"])
            if fitted:
                fit = client.post(
                    f"{BASE}/fit", json={"job_id": body["job_id"], "model_params": {"n_clusters": 2}}, headers=a
                )
                assert fit.status_code == 200, fit.text
                body["model_id"] = fit.headers["x-model-id"]
                w.team_a.add(body["model_id"])
            return body

        jobs = w.ids["jobs"] = {}
        jobs["fitted"] = upload("fitted.csv", True)["job_id"]
        jobs["unfitted"] = upload("unfitted.csv", False)["job_id"]
        kept = upload("dataset-deleted.csv", True)
        assert client.delete(f"{BASE}/datasets/{kept['dataset_id']}", headers=a).status_code == 204
        jobs["dataset deleted, model kept"] = kept["job_id"]
        bare = upload("dataset-deleted-unfitted.csv", False)
        assert client.delete(f"{BASE}/datasets/{bare['dataset_id']}", headers=a).status_code == 204
        jobs["dataset deleted, never fitted"] = bare["job_id"]
        unmodelled = upload("model-deleted.csv", True)
        assert client.delete(f"{BASE}/models/{unmodelled['model_id']}", headers=a).status_code == 204
        jobs["model deleted"] = unmodelled["job_id"]

        dataset = client.post(f"{BASE}/datasets", json={"data": POINTS}, headers=a)
        assert dataset.status_code == 201, dataset.text
        w.ids["dataset"] = dataset.json()["id"]
        body = {"dataset_id": w.ids["dataset"], "params": {"n_clusters": 2, "method": "minibatch"}}
        created = client.post(f"{BASE}/models", json=body, headers={**a, "Idempotency-Key": "shared-key"})
        assert created.status_code == 202, created.text
        w.ids["minibatch"] = created.json()["id"]
        wait_succeeded(w, w.ids["minibatch"])
        pushed = client.post(f"{BASE}/models/{w.ids['minibatch']}/data", json={"data": [[1, 1]]}, headers=a)
        assert pushed.status_code == 200, pushed.text  # version 2
        w.team_a.update(w.ids[k] for k in ("dataset", "minibatch"))

        b_dataset = client.post(f"{BASE}/datasets", json={"data": POINTS}, headers=w.headers("other"))
        assert b_dataset.status_code == 201, b_dataset.text
        w.ids["b_dataset"] = b_dataset.json()["id"]
        b_model = client.post(
            f"{BASE}/models", json={"dataset_id": w.ids["b_dataset"], "params": {"n_clusters": 2}},
            headers=w.headers("other"),
        )
        assert b_model.status_code == 202, b_model.text
        w.ids["b_model"] = b_model.json()["id"]
        wait_succeeded(w, w.ids["b_model"])
        yield w


def wait_succeeded(w: World, model_id: str, timeout: float = 60) -> None:
    """Wait (as the admin) until a model's fit has succeeded."""
    deadline = time.monotonic() + timeout
    while (status := w.ok("GET", f"/models/{model_id}", 200)["status"]) in ("queued", "running"):
        assert time.monotonic() < deadline, f"{model_id} still {status}"
        time.sleep(0.02)
    assert status == "succeeded", status


def same_answer(hidden: httpx.Response, hidden_key: str, absent: httpx.Response, absent_key: str) -> None:
    """``hidden`` (team-a's key) is ``absent`` (a key never made) byte for byte, the keys swapped."""
    assert hidden.status_code == absent.status_code, (hidden.text, absent.text)
    assert hidden.text == absent.text.replace(absent_key, hidden_key), (hidden.text, absent.text)
    strip = {k: v for k, v in absent.headers.items() if k not in VOLATILE}
    assert {k: v for k, v in hidden.headers.items() if k not in VOLATILE} == {
        k: v.replace(absent_key, hidden_key) for k, v in strip.items()
    }


# -- the cases: (name, team-a's key in the world, the never-made key, the request with a key) ----------


@dataclass(frozen=True)
class KeyCase:
    """One lookup by a secondary key."""

    name: str
    key: Callable[[World], str]
    missing: str
    request: Callable[[World, str], tuple[str, str, dict[str, Any]]]  # (method, url, httpx kwargs)
    mutating: bool = True


def _fit(w: World, job: str) -> tuple[str, str, dict[str, Any]]:
    return "POST", f"{BASE}/fit", {"json": {"job_id": int(job), "model_params": {"n_clusters": 2}}}


def _fit_json(w: World, job: str) -> tuple[str, str, dict[str, Any]]:
    headers = {"Accept": "application/json"}
    return "POST", f"{BASE}/fit", {"json": {"job_id": int(job)}, "headers": headers}


def _predict(w: World, job: str) -> tuple[str, str, dict[str, Any]]:
    files = {"file": ("predict.csv", PREDICT_CSV, "text/csv")}
    return "POST", f"{BASE}/predict", {"files": files, "data": {"job_id": job}}


def _job(state: str) -> Callable[[World], str]:
    return lambda w: str(w.ids["jobs"][state])


def _version(number: int, suffix: str = "", method: str = "GET") -> Callable[[World, str], tuple[str, str, dict]]:
    def request(w: World, model: str) -> tuple[str, str, dict[str, Any]]:
        return method, f"{BASE}/models/{model}/versions/{number}{suffix}", {}

    return request


def _predict_version(number: int) -> Callable[[World, str], tuple[str, str, dict]]:
    def request(w: World, model: str) -> tuple[str, str, dict[str, Any]]:
        return "POST", f"{BASE}/models/{model}/predictions?version={number}", {"json": {"data": [[0, 0]]}}

    return request


def _minibatch(w: World) -> str:
    return w.ids["minibatch"]


def _dataset(w: World) -> str:
    return w.ids["dataset"]


def _team_a(w: World) -> str:
    return "team-a"


STATES = ("fitted", "unfitted", "dataset deleted, model kept", "dataset deleted, never fitted", "model deleted")
CASES = [
    *(KeyCase(f"fit job_id ({state})", _job(state), str(MISSING_JOB), _fit) for state in STATES),
    *(KeyCase(f"fit job_id as JSON ({state})", _job(state), str(MISSING_JOB), _fit_json) for state in STATES),
    *(KeyCase(f"predict job_id ({state})", _job(state), str(MISSING_JOB), _predict) for state in STATES),
    # A version is a key within a model: another project's model with a version it has, or not.
    *(
        KeyCase(f"get version {n}", _minibatch, MISSING_MODEL, _version(n), mutating=False)
        for n in (1, 2, MISSING_VERSION)
    ),
    *(
        KeyCase(f"restore version {n}", _minibatch, MISSING_MODEL, _version(n, "/restore", "POST"))
        for n in (1, 2, MISSING_VERSION)
    ),
    *(KeyCase(f"predict with version {n}", _minibatch, MISSING_MODEL, _predict_version(n)) for n in (1, 2, 99)),
    KeyCase(
        "list versions", _minibatch, MISSING_MODEL, lambda w, m: ("GET", f"{BASE}/models/{m}/versions", {}), False
    ),
    # dataset_id as a filter and as a body field of another operation.
    KeyCase(
        "models filtered by dataset_id", _dataset, MISSING_DATASET,
        lambda w, d: ("GET", f"{BASE}/models?dataset_id={d}", {}), False,
    ),
    KeyCase(
        "sweeps filtered by dataset_id", _dataset, MISSING_DATASET,
        lambda w, d: ("GET", f"{BASE}/sweeps?dataset_id={d}", {}), False,
    ),
    KeyCase(
        "copy own model onto dataset_id", _dataset, MISSING_DATASET,
        lambda w, d: ("POST", f"{BASE}/models/{w.ids['b_model']}/copy", {"json": {"dataset_id": d}}),
    ),
    KeyCase(
        "create model on dataset_id", _dataset, MISSING_DATASET,
        lambda w, d: ("POST", f"{BASE}/models", {"json": {"dataset_id": d}, "headers": {"Idempotency-Key": "k-1"}}),
    ),
    KeyCase(
        "create sweep on dataset_id", _dataset, MISSING_DATASET,
        lambda w, d: ("POST", f"{BASE}/sweeps", {"json": {"dataset_id": d, "k_min": 2, "k_max": 3}}),
    ),
    # A project named by a project token: another project's name is as refused as a made-up one.
    *(
        KeyCase(
            f"?project= on {path}", _team_a, MISSING_PROJECT,
            lambda w, p, path=path: ("GET", f"{BASE}{path}?project={p}", {}), False,
        )
        for path in ("/datasets", "/models", "/sweeps", "/jobs")
    ),
    KeyCase(
        "?project= on create dataset", _team_a, MISSING_PROJECT,
        lambda w, p: ("POST", f"{BASE}/datasets?project={p}", {"json": {"data": POINTS}}),
    ),
]


def totals(w: World) -> dict[str, int]:
    """What exists, as the admin sees it (with team-a's minibatch model's versions)."""
    counts = {kind: w.ok("GET", f"/{kind}?limit=1", 200)["total"] for kind in ("datasets", "models", "sweeps")}
    counts["versions"] = len(w.ok("GET", f"/models/{w.ids['minibatch']}/versions", 200)["items"])
    return counts


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_another_projects_key_answers_as_a_key_never_made(
    world: World, case: KeyCase, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = case.key(world)
    before = totals(world) if case.mutating else None
    method, url, kwargs = case.request(world, key)
    hidden = _send(world, method, url, "other", **kwargs)
    method, url, kwargs = case.request(world, case.missing)
    absent = _send(world, method, url, "other", **kwargs)
    same_answer(hidden, key, absent, case.missing)
    others = world.team_a - {key}  # the key the caller sent may come back; no other team-a id may
    if hidden.headers.get("content-type", "").startswith(("application/json", PROBLEM)):
        assert not team_a_ids_in(hidden.json(), others), hidden.text
    assert not any(i in hidden.text for i in others), hidden.text
    if before is not None:
        assert totals(world) == before, "a refused request changed what exists"
    assert not [s for s in world.all_secrets if s in caplog.text], "a token secret was logged"


def _send(w: World, method: str, url: str, caller: str, **kwargs: Any) -> httpx.Response:
    kwargs["headers"] = {**kwargs.get("headers", {}), **w.headers(caller)}
    return w.client.request(method, url, **kwargs)


def _as(w: World, request: tuple[str, str, dict[str, Any]], caller: str) -> httpx.Response:
    method, url, kwargs = request
    return _send(w, method, url, caller, **kwargs)


def test_every_state_of_a_job_id_is_real_to_its_own_project(world: World) -> None:
    """The states above are what they claim: team-a (or an admin) gets their real answers."""
    jobs = world.ids["jobs"]
    fitted = _as(world, _predict(world, str(jobs["fitted"])), "contributor")
    assert fitted.status_code == 200, fitted.text
    kept = _as(world, _predict(world, str(jobs["dataset deleted, model kept"])), "contributor")
    assert kept.status_code == 200, kept.text  # the model still predicts without its dataset
    unfitted = _as(world, _predict(world, str(jobs["unfitted"])), "contributor")
    assert unfitted.status_code == 409 and "no fitted model yet" in unfitted.json()["detail"]
    gone = _as(world, _fit(world, str(jobs["dataset deleted, model kept"])), "contributor")
    assert gone.status_code == 404 and "was deleted" in gone.json()["detail"], gone.text
    # With neither its dataset nor a model left, an upload's project is unknown: only admins see it.
    bare = str(jobs["dataset deleted, never fitted"])
    assert "was deleted" in _as(world, _fit(world, bare), "admin").json()["detail"]
    same_answer(
        _as(world, _fit(world, bare), "contributor"), bare,
        _as(world, _fit(world, str(MISSING_JOB)), "contributor"), str(MISSING_JOB),
    )
    assert set(jobs) == set(STATES)


@pytest.mark.both_apps
def test_idempotency_keys_are_per_project(world: World) -> None:
    """team-b reusing team-a's Idempotency-Key gets a fit of its own, as with a fresh key: never
    team-a's model, nor a 422 naming it; a repeat within team-b replays team-b's model."""
    body = {"dataset_id": world.ids["b_dataset"], "params": {"n_clusters": 3}}

    def create(key: str) -> httpx.Response:
        return _send(world, "POST", f"{BASE}/models", "other", json=body, headers={"Idempotency-Key": key})

    reused, fresh = create("shared-key"), create("never-used-key")
    for response in (reused, fresh):
        assert response.status_code == 202, response.text
        assert "idempotent-replayed" not in response.headers
        model = response.json()
        assert model["project"] == "team-b" and model["dataset_id"] == world.ids["b_dataset"]
        assert not team_a_ids_in(model, world.team_a)
    assert set(reused.json()) == set(fresh.json())
    assert reused.json()["id"] not in (fresh.json()["id"], world.ids["minibatch"])
    again = create("shared-key")
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == reused.json()["id"]
    # The admin's key is kept per project too: the same key on team-b's dataset is team-b's.
    admin = _send(world, "POST", f"{BASE}/models", "admin", json=body, headers={"Idempotency-Key": "shared-key"})
    assert admin.status_code == 202 and admin.json()["id"] == reused.json()["id"]
    for model_id in (reused.json()["id"], fresh.json()["id"]):
        wait_succeeded(world, model_id)

