"""Access matrix (issue #7): every operation of api.yaml x every kind of caller.

The expectation comes from the spec, not from a table here: each operation's least role is its
``x-kmeans-role`` (``security: []`` makes it public), its success statuses are its 2xx responses.
Callers: admin, contributor and guest of project team-a, a contributor of team-b (another
project), no token, a revoked and an expired token; and signed-in users (issue #19) with
several memberships, each acting in one project by the X-Kmeans-Project header: ``member``
(contributor in team-a, guest in team-b; acts in team-a, so it must get what team-a's
contributor token gets), ``member-b`` (guest in team-a, contributor in team-b; acts in team-b,
like team-b's token), and ``signed-out`` (its sign-in ended, like a revoked token).

Each operation has a request builder that makes a valid request against team-a's fixture
resources (mutating ones on fresh throwaway resources), so a new operation without a builder
fails the matrix.

The whole matrix runs twice: on a server started after its first token existed, and on one
started open (no tokens) whose first token was made after start-up.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from starlette.testclient import TestClient

from kmeans.access import Access
from kmeans.api.specdoc import base_path
from kmeans.config import Settings
from kmeans.store import Store
from server import build_app
from tests.conftest import EXAMPLES, ROOT, local_client, wait_for_model, wait_until_done

PROBLEM = "application/problem+json"
SPEC = yaml.safe_load((ROOT / "api.yaml").read_text())
BASE = base_path(SPEC)
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
RANK = {"guest": 0, "contributor": 1, "admin": 2}
CALLERS = ("admin", "contributor", "guest", "other", "none", "revoked", "expired", "member", "member-b", "signed-out")
# Each signed-in user caller must get exactly what this token caller gets.
LIKE = {"member": "contributor", "member-b": "other", "signed-out": "revoked"}
USERS = {  # user caller -> (memberships, the project it acts in)
    "member": ([("team-a", "contributor"), ("team-b", "guest")], "team-a"),
    "member-b": ([("team-a", "guest"), ("team-b", "contributor")], "team-b"),
    "signed-out": ([("team-a", "contributor"), ("team-b", "guest")], "team-a"),
}
PASSWORD = "matrix password 19"  # of every user of the matrix (so one /me/password body fits each)
ROLE_OF = {"admin": "admin", "contributor": "contributor", "guest": "guest", "other": "contributor"}
PROJECT_OF = {"admin": None, "contributor": "team-a", "guest": "team-a", "other": "team-b"}
UNAUTHENTICATED = {"none": "requires a bearer token", "revoked": "revoked", "expired": "expired"}
PUBLIC = ["ping", "sign_in", "refresh_token", "sign_out"]


def like(caller: str) -> str:
    """The token caller a user caller stands for (itself for token callers)."""
    return LIKE.get(caller, caller)

MODEL_CSV = (EXAMPLES / "model.csv").read_bytes()
PREDICT_CSV = (EXAMPLES / "predict.csv").read_bytes()
POINTS = [[1.0, 2.0], [1.0, 4.0], [1.0, 0.0], [10.0, 2.0], [10.0, 4.0], [10.0, 0.0]]
LONG_FIT = {"n_clusters": 20, "init": "random", "n_init": 1000, "random_state": 0}
MISSING = {"dataset": "ds_0000000000000000", "model": "m_0000000000000000", "sweep": "sw_0000000000000000"}
MISSING_JOB = 999_999


@dataclass(frozen=True)
class Operation:
    """One operation of the spec and what the spec says about who may run it."""

    operation_id: str
    method: str
    path: str
    role: str | None  # None: public (security: [])
    success: frozenset[int]

    def pattern(self) -> re.Pattern[str]:
        """The path template as a regex over a concrete URL path."""
        return re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(BASE + self.path)))


def spec_operations() -> dict[str, Operation]:
    """Every (path, method) operation of api.yaml, by operationId."""
    operations: dict[str, Operation] = {}
    for path, item in SPEC["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            public = op.get("security", SPEC.get("security")) == []
            success = frozenset(int(code) for code in op["responses"] if str(code).startswith("2"))
            operations[op["operationId"]] = Operation(
                op["operationId"], method, path, None if public else op.get("x-kmeans-role", "<missing>"), success
            )
    return operations


OPERATIONS = spec_operations()


@dataclass
class Call:
    """One request, and what a refused one must have left alone."""

    method: str
    url: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    ident: str | None = None  # the team-a id the request names (to compare 404 details)
    intact: Callable[[], None] | None = None  # asserts a refused request changed nothing
    cleanup: Callable[[], None] | None = None


@dataclass
class World:
    """A running app with projects team-a/team-b, tokens of every kind and team-a's resources."""

    client: TestClient
    service: Any
    secrets: dict[str, str]
    token_ids: dict[str, str]
    ids: dict[str, Any]
    team_a: set[str]
    all_secrets: set[str] = field(default_factory=set)

    def headers(self, caller: str) -> dict[str, str]:
        """The Authorization header of ``caller`` (none for the anonymous caller), and a user's project header."""
        secret = self.secrets.get(caller)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        if caller in USERS:
            headers["X-Kmeans-Project"] = USERS[caller][1]
        return headers

    def send(self, call: Call, caller: str) -> httpx.Response:
        """Make ``call`` as ``caller``."""
        kwargs = dict(call.kwargs)
        kwargs["headers"] = {**kwargs.get("headers", {}), **self.headers(caller)}
        return self.client.request(call.method, call.url, **kwargs)

    def admin(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """A request with the admin token."""
        kwargs["headers"] = {**kwargs.get("headers", {}), **self.headers("admin")}
        return self.client.request(method, BASE + url, **kwargs)

    def ok(self, method: str, url: str, status: int, **kwargs: Any) -> Any:
        """An admin request that must answer ``status``; its JSON body (None if empty)."""
        response = self.admin(method, url, **kwargs)
        assert response.status_code == status, (method, url, response.text)
        return response.json() if response.content else None

    def totals(self) -> dict[str, int]:
        """How many datasets, models, sweeps, projects, tokens and users exist (as admin sees them)."""
        return {
            kind: self.ok("GET", f"/{kind}", 200)["total"]
            for kind in ("datasets", "models", "sweeps", "projects", "tokens", "users")
        }


# -- request builders: one per operationId --------------------------------------------------------


def _exists(w: World, url: str) -> Callable[[], None]:
    """An ``intact`` check: ``url`` still answers 200 to the admin."""

    def check() -> None:
        w.ok("GET", url, 200)

    return check


def _versions_unchanged(w: World, model_id: str) -> Callable[[], None]:
    """An ``intact`` check: the model still has the versions it has now."""
    before = w.ok("GET", f"/models/{model_id}/versions", 200)

    def check() -> None:
        assert w.ok("GET", f"/models/{model_id}/versions", 200) == before

    return check


def throwaway_dataset(w: World) -> str:
    """A new team-a dataset, to delete."""
    return w.ok("POST", "/datasets?project=team-a", 201, json={"data": POINTS})["id"]


def throwaway_model(w: World) -> str:
    """A new (imported, so already succeeded) team-a model, to delete."""
    return w.ok("POST", "/models/import?project=team-a", 201, json=w.ids["export"])["id"]


def long_fit(w: World) -> str:
    """A new team-a fit that runs long enough to be cancelled."""
    body = {"dataset_id": w.ids["long_dataset"], "params": LONG_FIT}
    return w.ok("POST", "/models", 202, json=body)["id"]


def b_ping(w: World, missing: bool) -> Call:
    """GET /ping."""
    return Call("GET", f"{BASE}/ping")


def b_upload(w: World, missing: bool) -> Call:
    """POST /upload (classic multipart)."""
    return Call("POST", f"{BASE}/upload", {"files": {"file": ("model.csv", MODEL_CSV, "text/csv")}})


def b_fit(w: World, missing: bool) -> Call:
    """POST /fit of team-a's upload."""
    job = MISSING_JOB if missing else w.ids["job_id"]
    body = {"job_id": job, "model_params": {"n_clusters": 2, "random_state": 0}}
    return Call("POST", f"{BASE}/fit", {"json": body}, ident=str(job))


def b_predict(w: World, missing: bool) -> Call:
    """POST /predict with team-a's upload."""
    job = MISSING_JOB if missing else w.ids["job_id"]
    files = {"file": ("predict.csv", PREDICT_CSV, "text/csv")}
    return Call("POST", f"{BASE}/predict", {"files": files, "data": {"job_id": str(job)}}, ident=str(job))


def b_create_dataset(w: World, missing: bool) -> Call:
    """POST /datasets from JSON."""
    return Call("POST", f"{BASE}/datasets", {"json": {"data": POINTS}})


def b_list_datasets(w: World, missing: bool) -> Call:
    """GET /datasets."""
    return Call("GET", f"{BASE}/datasets?limit=1000")


def b_get_dataset(w: World, missing: bool) -> Call:
    """GET /datasets/{id}."""
    ds = MISSING["dataset"] if missing else w.ids["dataset"]
    return Call("GET", f"{BASE}/datasets/{ds}", ident=ds)


def b_delete_dataset(w: World, missing: bool) -> Call:
    """DELETE /datasets/{id} of a throwaway dataset."""
    if missing:
        return Call("DELETE", f"{BASE}/datasets/{MISSING['dataset']}", ident=MISSING["dataset"])
    ds = throwaway_dataset(w)
    return Call("DELETE", f"{BASE}/datasets/{ds}", ident=ds, intact=_exists(w, f"/datasets/{ds}"))


def b_get_dataset_rows(w: World, missing: bool) -> Call:
    """GET /datasets/{id}/rows."""
    ds = MISSING["dataset"] if missing else w.ids["dataset"]
    return Call("GET", f"{BASE}/datasets/{ds}/rows", ident=ds)


def b_get_dataset_columns(w: World, missing: bool) -> Call:
    """GET /datasets/{id}/columns."""
    ds = MISSING["dataset"] if missing else w.ids["dataset"]
    return Call("GET", f"{BASE}/datasets/{ds}/columns", ident=ds)


def b_create_model(w: World, missing: bool) -> Call:
    """POST /models on team-a's dataset."""
    ds = MISSING["dataset"] if missing else w.ids["dataset"]
    return Call("POST", f"{BASE}/models", {"json": {"dataset_id": ds, "params": {"n_clusters": 2}}}, ident=ds)


def b_list_models(w: World, missing: bool) -> Call:
    """GET /models."""
    return Call("GET", f"{BASE}/models?limit=1000")


def _model_get(suffix: str, key: str = "model") -> Callable[[World, bool], Call]:
    """A builder for GET /models/{id}<suffix> of team-a's model ``key``."""

    def build(w: World, missing: bool) -> Call:
        model = MISSING["model"] if missing else w.ids[key]
        return Call("GET", f"{BASE}/models/{model}{suffix}", ident=model)

    build.__doc__ = f"GET /models/{{id}}{suffix}."
    return build


def b_delete_model(w: World, missing: bool) -> Call:
    """DELETE /models/{id} of a throwaway model."""
    if missing:
        return Call("DELETE", f"{BASE}/models/{MISSING['model']}", ident=MISSING["model"])
    model = throwaway_model(w)
    return Call("DELETE", f"{BASE}/models/{model}", ident=model, intact=_exists(w, f"/models/{model}"))


def _stop_long_job(collection: str, action: str) -> Callable[[World, bool], Call]:
    """A builder for POST /{collection}/{id}/{action} (cancel, pause) of a throwaway long job;
    a refused one leaves it queued or running, and it is cancelled afterwards."""
    start = {"models": long_fit, "sweeps": long_sweep}[collection]
    key = collection.rstrip("s")

    def build(w: World, missing: bool) -> Call:
        if missing:
            return Call("POST", f"{BASE}/{collection}/{MISSING[key]}/{action}", ident=MISSING[key])
        job = start(w)

        def intact() -> None:
            assert w.ok("GET", f"/{collection}/{job}", 200)["status"] in ("queued", "running")

        def cleanup() -> None:
            w.admin("POST", f"/{collection}/{job}/cancel")

        return Call("POST", f"{BASE}/{collection}/{job}/{action}", ident=job, intact=intact, cleanup=cleanup)

    build.__doc__ = f"POST /{collection}/{{id}}/{action} of a throwaway long job."
    return build


def b_resume_model(w: World, missing: bool) -> Call:
    """POST /models/{id}/resume of a throwaway paused fit."""
    if missing:
        return Call("POST", f"{BASE}/models/{MISSING['model']}/resume", ident=MISSING["model"])
    model = long_fit(w)
    w.ok("POST", f"/models/{model}/pause", 200)

    def intact() -> None:
        assert w.ok("GET", f"/models/{model}", 200)["status"] == "paused"

    def cleanup() -> None:
        w.admin("POST", f"/models/{model}/cancel")

    return Call("POST", f"{BASE}/models/{model}/resume", ident=model, intact=intact, cleanup=cleanup)


def b_copy_model(w: World, missing: bool) -> Call:
    """POST /models/{id}/copy of team-a's model with another k."""
    model = MISSING["model"] if missing else w.ids["model"]
    return Call("POST", f"{BASE}/models/{model}/copy", {"json": {"params": {"n_clusters": 3}}}, ident=model)


def b_patch_model(w: World, missing: bool) -> Call:
    """PATCH /models/{id} naming cluster 0 of team-a's model; a refused one leaves its names alone."""
    model = MISSING["model"] if missing else w.ids["model"]
    before = None if missing else w.ok("GET", f"/models/{model}", 200).get("cluster_names")

    def intact() -> None:
        assert w.ok("GET", f"/models/{model}", 200).get("cluster_names") == before

    return Call("PATCH", f"{BASE}/models/{model}", {"json": {"cluster_names": {"0": "matrix"}}}, ident=model,
                intact=None if missing else intact)


def b_predict_with_model(w: World, missing: bool) -> Call:
    """POST /models/{id}/predictions from JSON."""
    model = MISSING["model"] if missing else w.ids["model"]
    body = {"data": [[0, 0], [12, 3]]}
    return Call("POST", f"{BASE}/models/{model}/predictions", {"json": body}, ident=model)


def b_import_model(w: World, missing: bool) -> Call:
    """POST /models/import of team-a's model's export."""
    return Call("POST", f"{BASE}/models/import", {"json": w.ids["export"]})


def b_push_model_data(w: World, missing: bool) -> Call:
    """POST /models/{id}/data to team-a's minibatch model."""
    if missing:
        return Call(
            "POST", f"{BASE}/models/{MISSING['model']}/data", {"json": {"data": [[1, 2]]}}, ident=MISSING["model"]
        )
    model = w.ids["minibatch"]
    intact = _versions_unchanged(w, model)
    return Call("POST", f"{BASE}/models/{model}/data", {"json": {"data": [[1, 2]]}}, ident=model, intact=intact)


def b_restore_model_version(w: World, missing: bool) -> Call:
    """POST /models/{id}/versions/1/restore of team-a's minibatch model."""
    if missing:
        return Call("POST", f"{BASE}/models/{MISSING['model']}/versions/1/restore", ident=MISSING["model"])
    model = w.ids["minibatch"]
    intact = _versions_unchanged(w, model)
    return Call("POST", f"{BASE}/models/{model}/versions/1/restore", ident=model, intact=intact)


def b_create_sweep(w: World, missing: bool) -> Call:
    """POST /sweeps on team-a's dataset."""
    ds = MISSING["dataset"] if missing else w.ids["dataset"]
    return Call("POST", f"{BASE}/sweeps", {"json": {"dataset_id": ds, "k_min": 2, "k_max": 3}}, ident=ds)


def b_list_sweeps(w: World, missing: bool) -> Call:
    """GET /sweeps."""
    return Call("GET", f"{BASE}/sweeps?limit=1000")


def _sweep_get(suffix: str) -> Callable[[World, bool], Call]:
    """A builder for GET /sweeps/{id}<suffix> of team-a's sweep."""

    def build(w: World, missing: bool) -> Call:
        sweep = MISSING["sweep"] if missing else w.ids["sweep"]
        return Call("GET", f"{BASE}/sweeps/{sweep}{suffix}", ident=sweep)

    build.__doc__ = f"GET /sweeps/{{id}}{suffix}."
    return build


def long_sweep(w: World) -> str:
    """A new team-a sweep that runs long enough to be cancelled."""
    params = {k: v for k, v in LONG_FIT.items() if k != "n_clusters"}
    body = {"dataset_id": w.ids["long_dataset"], "k_min": 2, "k_max": 30, "params": params}
    return w.ok("POST", "/sweeps", 202, json=body)["id"]


def b_delete_sweep(w: World, missing: bool) -> Call:
    """DELETE /sweeps/{id} of a throwaway long sweep."""
    if missing:
        return Call("DELETE", f"{BASE}/sweeps/{MISSING['sweep']}", ident=MISSING["sweep"])
    sweep = long_sweep(w)

    def cleanup() -> None:
        w.admin("DELETE", f"/sweeps/{sweep}")

    return Call("DELETE", f"{BASE}/sweeps/{sweep}", ident=sweep, intact=_exists(w, f"/sweeps/{sweep}"), cleanup=cleanup)


def _evaluations_unchanged(w: World, model_id: str) -> Callable[[], None]:
    """An ``intact`` check: the model still has the evaluations it has now."""
    before = w.ok("GET", f"/models/{model_id}/evaluations", 200)["total"]

    def check() -> None:
        assert w.ok("GET", f"/models/{model_id}/evaluations", 200)["total"] == before

    return check


def b_create_evaluation(w: World, missing: bool) -> Call:
    """POST /models/{id}/evaluations of team-a's model on team-a's dataset."""
    model = MISSING["model"] if missing else w.ids["model"]
    body = {"json": {"dataset_id": w.ids["dataset"]}}
    intact = None if missing else _evaluations_unchanged(w, model)
    return Call("POST", f"{BASE}/models/{model}/evaluations", body, ident=model, intact=intact)


def _evaluation_call(method: str, suffix: str) -> Callable[[World, bool], Call]:
    """A builder for ``method`` /models/{id}/evaluations/{eid}<suffix> of team-a's evaluation."""

    def build(w: World, missing: bool) -> Call:
        model = MISSING["model"] if missing else w.ids["model"]
        return Call(method, f"{BASE}/models/{model}/evaluations/{w.ids['evaluation']}{suffix}", ident=model)

    build.__doc__ = f"{method} /models/{{id}}/evaluations/{{eid}}{suffix}."
    return build


def b_cancel_evaluation(w: World, missing: bool) -> Call:
    """POST …/evaluations/{eid}/cancel of a throwaway evaluation held back from the queue (paused in the
    store, so that no process takes it up before the request)."""
    from kmeans import evaluate

    if missing:
        url = f"{BASE}/models/{MISSING['model']}/evaluations/{w.ids['evaluation']}/cancel"
        return Call("POST", url, ident=MISSING["model"])
    model = w.ids["model"]
    record = evaluate.new_record(w.service.store.get_model(w.ids["model"]), w.service.store.get_dataset(
        w.ids["dataset"]), None, 60.0)
    w.service.store.add_evaluation({**record, "status": "paused", "phase": "held back by the test"})
    url = f"/models/{w.ids['model']}/evaluations/{record['id']}"

    def intact() -> None:
        assert w.ok("GET", url, 200)["status"] == "paused"

    def cleanup() -> None:
        w.admin("DELETE", url)

    return Call("POST", f"{BASE}/models/{model}/evaluations/{record['id']}/cancel", ident=model, intact=intact,
                cleanup=cleanup)


def b_delete_evaluation(w: World, missing: bool) -> Call:
    """DELETE …/evaluations/{eid} of a throwaway evaluation."""
    if missing:
        return Call("DELETE", f"{BASE}/models/{MISSING['model']}/evaluations/{w.ids['evaluation']}",
                    ident=MISSING["model"])
    made = w.ok("POST", f"/models/{w.ids['model']}/evaluations", 202, json={"dataset_id": w.ids["dataset"]})
    url = f"/models/{w.ids['model']}/evaluations/{made['id']}"
    return Call("DELETE", f"{BASE}{url}", ident=w.ids["model"], intact=_exists(w, url),
                cleanup=lambda: w.admin("DELETE", url))


def b_create_comparison(w: World, missing: bool) -> Call:
    """POST /models/{id}/comparisons of team-a's model with its minibatch one."""
    model = MISSING["model"] if missing else w.ids["model"]
    body = {"json": {"other_model_id": w.ids["minibatch"]}}
    return Call("POST", f"{BASE}/models/{model}/comparisons", body, ident=model)
def _scorings_of(w: World, missing: bool) -> tuple[str, str]:
    """The model a scoring builder names (MISSING's for the missing variant) and its scorings URL."""
    model = MISSING["model"] if missing else w.ids["model"]
    return model, f"{BASE}/models/{model}/scorings"


def b_create_scoring(w: World, missing: bool) -> Call:
    """POST /models/{id}/scorings of team-a's dataset with team-a's model."""
    model, url = _scorings_of(w, missing)
    return Call("POST", url, {"json": {"dataset_id": w.ids["dataset"]}}, ident=model)


def b_list_scorings(w: World, missing: bool) -> Call:
    """GET /models/{id}/scorings of team-a's model."""
    model, url = _scorings_of(w, missing)
    return Call("GET", url, ident=model)


def _scoring_get(suffix: str) -> Callable[[World, bool], Call]:
    """A builder for GET /models/{id}/scorings/{sid}<suffix> of team-a's (succeeded) scoring."""

    def build(w: World, missing: bool) -> Call:
        model, url = _scorings_of(w, missing)
        return Call("GET", f"{url}/{w.ids['scoring']}{suffix}", ident=model)

    build.__doc__ = f"GET /models/{{id}}/scorings/{{sid}}{suffix}."
    return build


def b_delete_scoring(w: World, missing: bool) -> Call:
    """DELETE /models/{id}/scorings/{sid} of a throwaway scoring."""
    model, url = _scorings_of(w, missing)
    if missing:
        return Call("DELETE", f"{url}/{w.ids['scoring']}", ident=model)
    scoring = w.ok("POST", f"/models/{model}/scorings", 202, json={"dataset_id": w.ids["dataset"]})["id"]

    def cleanup() -> None:
        w.admin("DELETE", f"/models/{model}/scorings/{scoring}")

    intact = _exists(w, f"/models/{model}/scorings/{scoring}")
    return Call("DELETE", f"{url}/{scoring}", ident=model, intact=intact, cleanup=cleanup)


def b_cancel_scoring(w: World, missing: bool) -> Call:
    """POST /models/{id}/scorings/{sid}/cancel of a throwaway scoring kept queued behind two long fits
    (first-in first-out within the project; two jobs run at once); everything is cancelled afterwards."""
    model, url = _scorings_of(w, missing)
    if missing:
        return Call("POST", f"{url}/{w.ids['scoring']}/cancel", ident=model)
    blockers = [long_fit(w), long_fit(w)]
    scoring = w.ok("POST", f"/models/{model}/scorings", 202, json={"dataset_id": w.ids["dataset"]})["id"]

    def intact() -> None:
        assert w.ok("GET", f"/models/{model}/scorings/{scoring}", 200)["status"] in ("queued", "running")

    def cleanup() -> None:
        w.admin("POST", f"/models/{model}/scorings/{scoring}/cancel")
        for fit_id in blockers:
            w.admin("POST", f"/models/{fit_id}/cancel")

    return Call("POST", f"{url}/{scoring}/cancel", ident=model, intact=intact, cleanup=cleanup)


def b_list_jobs(w: World, missing: bool) -> Call:
    """GET /jobs of every state (the finished ones too, so that there is something to see)."""
    return Call("GET", f"{BASE}/jobs?status=succeeded&limit=1000")


def b_get_events(w: World, missing: bool) -> Call:
    """GET /events from the start of the log, in a stream cut short to a second."""
    from kmeans.api import jobs

    before = jobs.EVENT_STREAM_SECONDS
    jobs.EVENT_STREAM_SECONDS = 1.0

    def cleanup() -> None:
        jobs.EVENT_STREAM_SECONDS = before

    return Call("GET", f"{BASE}/events", {"headers": {"Last-Event-ID": "0"}}, cleanup=cleanup)


def b_whoami(w: World, missing: bool) -> Call:
    """GET /me."""
    return Call("GET", f"{BASE}/me")


def b_create_project(w: World, missing: bool) -> Call:
    """POST /projects of a new project."""
    project = f"p-{uuid.uuid4().hex[:12]}"

    def intact() -> None:
        assert w.admin("GET", f"/projects/{project}").status_code == 404

    return Call("POST", f"{BASE}/projects", {"json": {"id": project, "description": "x"}}, intact=intact)


def b_list_projects(w: World, missing: bool) -> Call:
    """GET /projects."""
    return Call("GET", f"{BASE}/projects")


def b_get_project(w: World, missing: bool) -> Call:
    """GET /projects/team-a."""
    return Call("GET", f"{BASE}/projects/team-a")


def b_delete_project(w: World, missing: bool) -> Call:
    """DELETE /projects/{id} of a throwaway project."""
    project = f"p-{uuid.uuid4().hex[:12]}"
    w.ok("POST", "/projects", 201, json={"id": project})
    return Call("DELETE", f"{BASE}/projects/{project}", intact=_exists(w, f"/projects/{project}"))


def b_create_token(w: World, missing: bool) -> Call:
    """POST /tokens of a team-a guest token."""
    return Call(
        "POST", f"{BASE}/tokens", {"json": {"role": "guest", "project": "team-a", "name": "made in the matrix"}}
    )


def b_list_tokens(w: World, missing: bool) -> Call:
    """GET /tokens."""
    return Call("GET", f"{BASE}/tokens?limit=1000")


def b_get_token(w: World, missing: bool) -> Call:
    """GET /tokens/{id} of team-a's guest token."""
    return Call("GET", f"{BASE}/tokens/{w.token_ids['guest']}")


def b_revoke_token(w: World, missing: bool) -> Call:
    """POST /tokens/{id}/revoke of a throwaway token."""
    record, secret = w.service.access.create_token("guest", "team-a", "to revoke")
    w.all_secrets.add(secret)

    def intact() -> None:
        assert w.ok("GET", f"/tokens/{record['id']}", 200)["status"] == "active"

    return Call("POST", f"{BASE}/tokens/{record['id']}/revoke", intact=intact)


def throwaway_user(w: World) -> str:
    """A new team-a guest user, to change or delete."""
    body = {"name": f"u-{uuid.uuid4().hex[:12]}", "password": PASSWORD, "memberships": [GUEST_OF_A]}
    return w.ok("POST", "/users", 201, json=body)["id"]


GUEST_OF_A = {"project": "team-a", "role": "guest"}


def b_create_user(w: World, missing: bool) -> Call:
    """POST /users of a new team-a guest."""
    name = f"u-{uuid.uuid4().hex[:12]}"
    body = {"name": name, "password": PASSWORD, "memberships": [GUEST_OF_A]}

    def intact() -> None:
        assert name not in {u["name"] for u in w.ok("GET", "/users?limit=1000", 200)["items"]}

    return Call("POST", f"{BASE}/users", {"json": body}, intact=intact)


def b_list_users(w: World, missing: bool) -> Call:
    """GET /users."""
    return Call("GET", f"{BASE}/users?limit=1000")


def b_get_user(w: World, missing: bool) -> Call:
    """GET /users/{id} of the member."""
    return Call("GET", f"{BASE}/users/{w.token_ids['member']}")


def b_update_user(w: World, missing: bool) -> Call:
    """PATCH /users/{id} of a throwaway user: a contributor of team-a now."""
    user = throwaway_user(w)

    def intact() -> None:
        assert w.ok("GET", f"/users/{user}", 200)["memberships"] == [GUEST_OF_A]

    body = {"memberships": [{"project": "team-a", "role": "contributor"}]}
    return Call("PATCH", f"{BASE}/users/{user}", {"json": body}, intact=intact)


def b_delete_user(w: World, missing: bool) -> Call:
    """DELETE /users/{id} of a throwaway user."""
    user = throwaway_user(w)
    return Call("DELETE", f"{BASE}/users/{user}", intact=_exists(w, f"/users/{user}"))


def b_change_password(w: World, missing: bool) -> Call:
    """POST /me/password from the matrix password to itself (a user caller's own)."""
    body = {"current_password": PASSWORD, "new_password": PASSWORD}
    return Call("POST", f"{BASE}/me/password", {"json": body})


def b_sign_in(w: World, missing: bool) -> Call:
    """POST /auth/token of the signer (public: the caller's header plays no part)."""
    form = {"grant_type": "password", "username": "signer", "password": PASSWORD}
    return Call("POST", f"{BASE}/auth/token", {"data": form})


def _signer_refresh(w: World) -> str:
    grant = w.service.access.sign_in("signer", PASSWORD, "127.0.0.1")
    w.all_secrets.update((grant["access_token"], grant["refresh_token"]))
    return grant["refresh_token"]


def b_refresh_token(w: World, missing: bool) -> Call:
    """POST /auth/refresh of a fresh sign-in of the signer."""
    return Call("POST", f"{BASE}/auth/refresh", {"data": {"refresh_token": _signer_refresh(w)}})


def b_sign_out(w: World, missing: bool) -> Call:
    """POST /auth/logout of a fresh sign-in of the signer."""
    return Call("POST", f"{BASE}/auth/logout", {"data": {"refresh_token": _signer_refresh(w)}})


# How an operation relates to projects: what a caller of another project gets.
#   resource: names a team-a resource -> 404, like a missing one;  list: 200 without team-a's;
#   create: makes something in the caller's own project;  self: about the caller;
#   global: not project-bound (projects, tokens, users, ping, sign-in);  password: a user's own (API tokens: 403).
BUILDERS: dict[str, tuple[str, Callable[[World, bool], Call]]] = {
    "ping": ("global", b_ping),
    "upload": ("create", b_upload),
    "fit": ("resource", b_fit),
    "predict": ("resource", b_predict),
    "create_dataset": ("create", b_create_dataset),
    "list_datasets": ("list", b_list_datasets),
    "get_dataset": ("resource", b_get_dataset),
    "delete_dataset": ("resource", b_delete_dataset),
    "get_dataset_rows": ("resource", b_get_dataset_rows),
    "get_dataset_columns": ("resource", b_get_dataset_columns),
    "create_model": ("resource", b_create_model),
    "list_models": ("list", b_list_models),
    "get_model": ("resource", _model_get("")),
    "delete_model": ("resource", b_delete_model),
    "cancel_model": ("resource", _stop_long_job("models", "cancel")),
    "pause_model": ("resource", _stop_long_job("models", "pause")),
    "resume_model": ("resource", b_resume_model),
    "copy_model": ("resource", b_copy_model),
    "get_model_events": ("resource", _model_get("/events")),
    "get_model_labels": ("resource", _model_get("/labels")),
    "get_model_centers": ("resource", _model_get("/centers")),
    "predict_with_model": ("resource", b_predict_with_model),
    "get_model_plot": ("resource", _model_get("/plot.png")),
    "patch_model": ("resource", b_patch_model),
    "get_model_profile": ("resource", _model_get("/profile")),
    "get_model_profile_plot": ("resource", _model_get("/profile.png")),
    "export_model": ("resource", _model_get("/export")),
    "import_model": ("create", b_import_model),
    "push_model_data": ("resource", b_push_model_data),
    "list_model_versions": ("resource", _model_get("/versions", "minibatch")),
    "get_model_version": ("resource", _model_get("/versions/1", "minibatch")),
    "restore_model_version": ("resource", b_restore_model_version),
    "create_sweep": ("resource", b_create_sweep),
    "list_sweeps": ("list", b_list_sweeps),
    "get_sweep": ("resource", _sweep_get("")),
    "get_sweep_plot": ("resource", _sweep_get("/plot.png")),
    "get_sweep_events": ("resource", _sweep_get("/events")),
    "cancel_sweep": ("resource", _stop_long_job("sweeps", "cancel")),
    "delete_sweep": ("resource", b_delete_sweep),
    "create_evaluation": ("resource", b_create_evaluation),
    "list_evaluations": ("resource", _model_get("/evaluations")),
    "get_evaluation": ("resource", _evaluation_call("GET", "")),
    "get_evaluation_events": ("resource", _evaluation_call("GET", "/events")),
    "cancel_evaluation": ("resource", b_cancel_evaluation),
    "delete_evaluation": ("resource", b_delete_evaluation),
    "create_comparison": ("resource", b_create_comparison),
    "create_scoring": ("resource", b_create_scoring),
    "list_scorings": ("resource", b_list_scorings),
    "get_scoring": ("resource", _scoring_get("")),
    "get_scoring_events": ("resource", _scoring_get("/events")),
    "get_scoring_result": ("resource", _scoring_get("/result")),
    "cancel_scoring": ("resource", b_cancel_scoring),
    "delete_scoring": ("resource", b_delete_scoring),
    "list_jobs": ("list", b_list_jobs),
    "get_events": ("events", b_get_events),
    "whoami": ("self", b_whoami),
    "create_project": ("global", b_create_project),
    "list_projects": ("global", b_list_projects),
    "get_project": ("global", b_get_project),
    "delete_project": ("global", b_delete_project),
    "create_token": ("global", b_create_token),
    "list_tokens": ("global", b_list_tokens),
    "get_token": ("global", b_get_token),
    "revoke_token": ("global", b_revoke_token),
    "create_user": ("global", b_create_user),
    "list_users": ("global", b_list_users),
    "get_user": ("global", b_get_user),
    "update_user": ("global", b_update_user),
    "delete_user": ("global", b_delete_user),
    "change_password": ("password", b_change_password),
    "sign_in": ("global", b_sign_in),
    "refresh_token": ("global", b_refresh_token),
    "sign_out": ("global", b_sign_out),
}


# -- the world ------------------------------------------------------------------------------------


def long_csv(rows: int = 8_000, features: int = 8) -> bytes:
    """Random CSV rows on which LONG_FIT takes many seconds."""
    values = np.random.default_rng(0).normal(size=(rows, features)).round(4)
    return "\n".join(",".join(map(str, row)) for row in values.tolist()).encode()


def wait_for_sweep(w: World, sweep_id: str, timeout: float = 30) -> dict[str, Any]:
    """Poll a sweep (as admin) until it has finished."""
    deadline = time.monotonic() + timeout
    while True:
        sweep = w.ok("GET", f"/sweeps/{sweep_id}", 200)
        if sweep["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return sweep
        time.sleep(0.02)


def make_tokens(access: Access, secrets: dict[str, str], token_ids: dict[str, str]) -> None:
    """Tokens of every caller but the admin (made already): team-a's, team-b's, revoked, expired."""
    for caller, role, project in (
        ("contributor", "contributor", "team-a"),
        ("guest", "guest", "team-a"),
        ("other", "contributor", "team-b"),
        ("revoked", "contributor", "team-a"),
        ("expired", "contributor", "team-a"),
    ):
        record, secrets[caller] = access.create_token(role, project, f"matrix {caller}")
        token_ids[caller] = record["id"]
    access.revoke_token(token_ids["revoked"])
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    with access.store.transaction() as db:
        db.execute("UPDATE tokens SET expires_at = ? WHERE id = ?", (past, token_ids["expired"]))


def make_users(access: Access, secrets: dict[str, str], token_ids: dict[str, str]) -> set[str]:
    """The user callers, signed in (the signed-out one signed out again), and the signer that the
    sign-in builders sign in; the refresh tokens and the password (secrets too)."""
    more = {PASSWORD}
    for caller, (memberships, _) in USERS.items():
        user = access.create_user(caller, PASSWORD, memberships=[{"project": p, "role": r} for p, r in memberships])
        token_ids[caller] = user["id"]
        grant = access.sign_in(caller, PASSWORD, "127.0.0.1")
        secrets[caller] = grant["access_token"]
        more.add(grant["refresh_token"])
        if caller == "signed-out":
            access.sign_out(grant["refresh_token"])
    access.create_user("signer", PASSWORD, memberships=[GUEST_OF_A])
    return more


@pytest.fixture(scope="module", params=["token-before-start", "token-after-start"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, app_class: type
) -> Iterator[World]:
    """One app for the whole matrix, with its projects, tokens and team-a's resources."""
    data_dir = tmp_path_factory.mktemp("access") / "data"
    # Access tokens that outlive the matrix, however long a busy machine takes over it.
    settings = Settings(data_dir=data_dir, max_upload_bytes=1_000_000, max_concurrent_fits=2, access_token_ttl=86400)
    secrets: dict[str, str] = {}
    token_ids: dict[str, str] = {}
    if request.param == "token-before-start":  # as `server.py create-token` before the server starts
        record, secrets["admin"] = Access(Store(data_dir)).create_token("admin")
        token_ids["admin"] = record["id"]
    app = build_app(settings, app_class)
    service = app.service
    if request.param == "token-after-start":  # the server started open, the first token came later
        record, secrets["admin"] = service.access.create_token("admin")
        token_ids["admin"] = record["id"]
    service.access.create_project("team-a", "the project of the matrix")
    service.access.create_project("team-b", "another project")
    make_tokens(service.access, secrets, token_ids)
    more_secrets = make_users(service.access, secrets, token_ids)
    with local_client(app) as client:
        w = World(client, service, secrets, token_ids, {}, set(), set(secrets.values()) | more_secrets)
        ids = w.ids
        ids["dataset"] = w.ok("POST", "/datasets?project=team-a", 201, json={"data": POINTS})["id"]
        long_ds = w.ok(
            "POST", "/datasets?project=team-a", 201, content=long_csv(), headers={"Content-Type": "text/csv"}
        )
        ids["long_dataset"] = long_ds["id"]
        started = {
            key: w.ok("POST", "/models", 202, json={"dataset_id": ids["dataset"], "params": params})["id"]
            for key, params in (
                ("model", {"n_clusters": 2, "random_state": 0}),
                ("minibatch", {"n_clusters": 2, "method": "minibatch", "random_state": 0}),
            )
        }
        ids["sweep"] = w.ok("POST", "/sweeps", 202, json={"dataset_id": ids["dataset"], "k_min": 2, "k_max": 3})["id"]
        contributor = w.headers("contributor")
        upload = client.post(
            f"{BASE}/upload", files={"file": ("model.csv", MODEL_CSV, "text/csv")}, headers=contributor
        )
        assert upload.status_code == 200, upload.text
        ids["job_id"], ids["upload_dataset"] = upload.json()["job_id"], upload.json()["dataset_id"]
        fitted = client.post(
            f"{BASE}/fit", json={"job_id": ids["job_id"], "model_params": {"n_clusters": 2}}, headers=contributor
        )
        assert fitted.status_code == 200, fitted.text
        ids["upload_model"] = fitted.headers["x-model-id"]
        for key, model_id in started.items():
            ids[key] = model_id
            assert wait_for_model(_Admin(w), model_id)["status"] == "succeeded"
        ids["sweep_status"] = wait_for_sweep(w, ids["sweep"])["status"]  # see test_a_projects_sweep_succeeds
        evaluation = w.ok("POST", f"/models/{ids['model']}/evaluations", 202, json={"dataset_id": ids["dataset"]})
        ids["evaluation"] = evaluation["id"]
        assert wait_until_done(_Admin(w), f"{BASE}/models/{ids['model']}/evaluations/{evaluation['id']}")[
            "status"] == "succeeded"
        ids["export"] = w.ok("GET", f"/models/{ids['model']}/export", 200)
        scoring = w.ok("POST", f"/models/{ids['model']}/scorings", 202, json={"dataset_id": ids["dataset"]})["id"]
        ids["scoring"] = scoring
        assert wait_until_done(_Admin(w), f"{BASE}/models/{ids['model']}/scorings/{scoring}")["status"] == "succeeded"
        w.ok("POST", f"/models/{ids['minibatch']}/data", 200, json={"data": [[1, 1], [10, 1]]})  # a version 2
        b_dataset = client.post(f"{BASE}/datasets", json={"data": POINTS}, headers=w.headers("other"))
        assert b_dataset.status_code == 201, b_dataset.text
        ids["b_dataset"] = b_dataset.json()["id"]
        w.team_a.update(v for k, v in ids.items() if isinstance(v, str) and k not in ("b_dataset", "sweep_status"))
        for key in ("dataset", "long_dataset", "upload_dataset", "model", "minibatch", "upload_model"):
            kind = "datasets" if "dataset" in key else "models"
            assert w.ok("GET", f"/{kind}/{ids[key]}", 200)["project"] == "team-a", key
        assert w.ok("GET", f"/sweeps/{ids['sweep']}", 200)["project"] == "team-a"
        yield w


class _Admin:
    """A client-like wrapper that sends every GET with the admin token (for ``wait_for_model``)."""

    def __init__(self, w: World) -> None:
        self.w = w

    def get(self, url: str) -> httpx.Response:
        """GET ``url`` as the admin."""
        return self.w.client.get(url, headers=self.w.headers("admin"))


# -- expectations ---------------------------------------------------------------------------------


def expected(op: Operation, scope: str, caller: str) -> str:
    """What the spec says ``caller`` gets: ok, 401, 403, or hidden (404 as if missing)."""
    original = caller
    if op.role is None:
        return "ok"
    caller = like(caller)
    if caller in UNAUTHENTICATED:
        return "401"
    if RANK[ROLE_OF[caller]] < RANK[op.role]:
        return "403"
    if caller == "other" and scope == "resource":
        return "hidden"
    if scope == "password" and original not in USERS:
        return "403"  # only users have passwords
    return "ok"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """A problem+json answer with ``status`` and a detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    problem = response.json()
    assert problem["status"] == status and problem["detail"].strip(), problem
    return problem


def normalized(problem: dict[str, Any], ident: str | None) -> dict[str, Any]:
    """A problem with the resource id in its detail replaced by a placeholder."""
    detail = (
        re.sub(rf"(?<![\w-]){re.escape(ident)}(?![\w-])", "<id>", problem["detail"]) if ident else problem["detail"]
    )
    return {**problem, "detail": detail}


def team_a_ids_in(body: Any, team_a: set[str]) -> set[str]:
    """Every team-a id mentioned anywhere in a JSON body."""
    found: set[str] = set()
    if isinstance(body, dict):
        for value in body.values():
            found |= team_a_ids_in(value, team_a)
    elif isinstance(body, list):
        for value in body:
            found |= team_a_ids_in(value, team_a)
    elif isinstance(body, str) and body in team_a:
        found.add(body)
    return found


def check_allowed(w: World, op: Operation, scope: str, caller: str, response: httpx.Response) -> None:
    """A success status of the spec, and project-correct content."""
    assert response.status_code in op.success, (op.success, response.status_code, response.text)
    user = caller if caller in USERS else None
    caller = like(caller)
    project = PROJECT_OF.get(caller)
    if op.operation_id == "create_token":
        w.all_secrets.add(response.json()["token"])
    if op.operation_id in ("sign_in", "refresh_token"):
        grant = response.json()
        assert grant["access_token"].startswith("kma_") and grant["refresh_token"].startswith("kmr_"), grant
        w.all_secrets.update((grant["access_token"], grant["refresh_token"]))
    if scope == "list":
        items = response.json()["items"]
        if project is not None:
            assert {item["project"] for item in items} <= {project}, items
        if caller == "other":
            assert not team_a_ids_in(items, w.team_a), "another project's resources are listed"
        if op.operation_id == "list_datasets":
            listed = {item["id"] for item in items}
            assert (w.ids["dataset"] in listed) == (caller != "other")
            assert (w.ids["b_dataset"] in listed) == (caller in ("admin", "other"))
    elif scope == "create":
        body = response.json()
        if op.operation_id == "upload":
            body = w.ok("GET", f"/datasets/{body['dataset_id']}", 200)
        assert body["project"] == (project or "default"), body
    elif scope == "events":
        events = [
            json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")
        ]
        assert events or project == "team-b", "the project's event log is empty"
        if project is not None:
            assert {event["project"] for event in events} <= {project}, events
        if caller == "other":
            assert not team_a_ids_in(events, w.team_a), "another project's events are streamed"
    elif scope == "self":
        me = response.json()
        assert (me["role"], me["project"], me["token_id"], me["open"]) == (
            ROLE_OF[caller],
            project,
            None if user else w.token_ids[caller],
            False,
        )
        if user:
            assert me["user"]["id"] == w.token_ids[user] and len(me["user"]["memberships"]) == 2, me
    elif op.operation_id == "ping":
        assert response.json()["status"] == "ok"


def case(op_id: str, caller: str) -> Any:
    """The pytest parameter of one (operation, caller) cell."""
    return pytest.param(op_id, caller, id=f"{op_id}-{caller}")


CASES = [case(op_id, caller) for op_id in OPERATIONS for caller in CALLERS]


def test_every_operation_of_the_spec_has_a_request_builder_and_a_role() -> None:
    """A new operation in api.yaml without a builder (or without x-kmeans-role) fails here."""
    assert set(OPERATIONS) - set(BUILDERS) == set(), "operations without a request builder"
    assert set(BUILDERS) - set(OPERATIONS) == set(), "builders of operations the spec no longer has"
    for op in OPERATIONS.values():
        assert op.role is None or op.role in RANK, f"{op.operation_id}: x-kmeans-role {op.role!r}"
        assert op.success, f"{op.operation_id} documents no 2xx response"
    assert [op.operation_id for op in OPERATIONS.values() if op.role is None] == PUBLIC


@pytest.mark.parametrize(("op_id", "caller"), CASES)
def test_access_matrix(world: World, op_id: str, caller: str, caplog: pytest.LogCaptureFixture) -> None:
    """``caller`` running ``op_id`` gets what the spec's x-kmeans-role and the project rules say."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="kmeans")
    op = OPERATIONS[op_id]
    assert op_id in BUILDERS, f"no request builder for {op_id}"
    scope, build = BUILDERS[op_id]
    outcome = expected(op, scope, caller)
    call = build(world, False)
    assert call.method.lower() == op.method and op.pattern().fullmatch(httpx.URL(call.url).path), (call, op)
    mutating = op.method != "get"
    before = world.totals() if mutating and outcome != "ok" else None
    try:
        response = world.send(call, caller)
        if outcome == "ok":
            check_allowed(world, op, scope, caller, response)
        elif outcome == "401":
            assert_problem(response, 401)
            challenge = response.headers.get("www-authenticate", "")
            assert challenge.startswith("Bearer") and 'realm="kmeans"' in challenge, response.headers
            assert UNAUTHENTICATED[like(caller)] in response.json()["detail"], response.json()
        elif outcome == "403":
            assert_problem(response, 403)
        else:
            hidden = assert_problem(response, 404)
            missing_call = build(world, True)
            absent = assert_problem(world.send(missing_call, caller), 404)
            assert normalized(hidden, call.ident) == normalized(absent, missing_call.ident), (hidden, absent)
        if outcome != "ok":
            if call.intact is not None:
                call.intact()
            if before is not None:
                assert world.totals() == before, "a refused request changed what exists"
        secrets = world.all_secrets - (
            {response.json()["token"]} if op_id == "create_token" and outcome == "ok" else set()
        ) - (  # the one answer that holds a sign-in's new tokens
            {response.json()["access_token"], response.json()["refresh_token"]}
            if op_id in ("sign_in", "refresh_token") and outcome == "ok" else set()
        )
        leaked = [s for s in secrets if s in response.text or s in str(response.headers)]
        assert not leaked, "a response holds a token secret"
        assert not [s for s in world.all_secrets if s in caplog.text], "a token secret was logged"
    finally:
        if call.cleanup is not None:
            call.cleanup()


def test_a_projects_sweep_succeeds(world: World) -> None:
    """team-a's fixture sweep (created by the admin in team-a) ran to the end (its thread runs as nobody's caller)."""
    assert world.ids["sweep_status"] == "succeeded"


def test_another_projects_name_is_refused_to_project_tokens(world: World) -> None:
    """A project token naming another project (?project=) gets 403 and nothing is created."""
    before = world.totals()
    for caller in ("contributor", "guest", "other"):
        target = "team-b" if PROJECT_OF[caller] == "team-a" else "team-a"
        headers = world.headers(caller)
        for url in ("/datasets", "/models", "/sweeps"):
            assert_problem(world.client.get(f"{BASE}{url}?project={target}", headers=headers), 403)
        if caller != "guest":
            created = world.client.post(f"{BASE}/datasets?project={target}", json={"data": POINTS}, headers=headers)
            assert_problem(created, 403)
            imported = world.client.post(
                f"{BASE}/models/import?project={target}", json=world.ids["export"], headers=headers
            )
            assert_problem(imported, 403)
    assert world.totals() == before
    own = world.client.get(f"{BASE}/datasets?project=team-a", headers=world.headers("contributor"))
    assert own.status_code == 200 and world.ids["dataset"] in {d["id"] for d in own.json()["items"]}


def test_secrets_never_appear_after_creation(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """After the matrix, no token list or token record (nor any log line) holds a secret."""
    caplog.set_level(logging.DEBUG, logger="kmeans")
    listed = world.admin("GET", "/tokens?limit=1000")
    assert listed.status_code == 200
    tokens = listed.json()["items"]
    assert {"token", "hash"} & {key for token in tokens for key in token} == set()
    assert {v for k, v in world.token_ids.items() if k not in USERS} <= {token["id"] for token in tokens}
    statuses = {token["id"]: token["status"] for token in tokens}
    assert statuses[world.token_ids["revoked"]] == "revoked" and statuses[world.token_ids["expired"]] == "expired"
    bodies = [listed.text]
    for token in tokens:
        one = world.admin("GET", f"/tokens/{token['id']}")
        assert one.status_code == 200 and "token" not in one.json() and "hash" not in one.json()
        bodies.append(one.text)
    for caller in ("admin", "contributor", "guest", "other", "member", "member-b"):
        bodies.append(world.client.get(f"{BASE}/me", headers=world.headers(caller)).text)
    bodies.append(world.admin("GET", "/users?limit=1000").text)
    assert len(world.all_secrets) > len(world.secrets)  # the matrix made tokens over HTTP too
    for secret in world.all_secrets:
        assert not any(secret in body for body in bodies), "a token secret is shown after its creation"
        assert secret not in caplog.text, "a token secret was logged"


# -- a server that starts without tokens ----------------------------------------------------------


@pytest.mark.both_apps
def test_open_server_requires_tokens_from_the_first_one_created_over_http(tmp_path: Path, app_class: type) -> None:
    """Started without tokens: only local clients, no token needed; after POST /tokens, 401 at once."""
    settings = Settings(data_dir=tmp_path / "data", max_upload_bytes=1_000_000, max_concurrent_fits=1)
    app = build_app(settings, app_class)
    with local_client(app) as local, app.test_client() as remote:
        me = local.get(f"{BASE}/me")
        assert me.status_code == 200 and me.json()["open"] is True and me.json()["role"] == "admin"
        assert local.get(f"{BASE}/datasets").status_code == 200
        assert_problem(remote.get(f"{BASE}/datasets"), 403)
        created = local.post(f"{BASE}/tokens", json={"role": "admin", "name": "first"})
        assert created.status_code == 201, created.text
        secret = created.json()["token"]
        for client in (local, remote):
            for method, url in (("GET", "/datasets"), ("GET", "/me"), ("POST", "/tokens")):
                refused = client.request(method, BASE + url, json={"role": "admin"} if method == "POST" else None)
                assert_problem(refused, 401)
                assert refused.headers["www-authenticate"].startswith('Bearer realm="kmeans"')
            assert client.get(f"{BASE}/ping").status_code == 200
        auth = {"Authorization": f"Bearer {secret}"}
        me = local.get(f"{BASE}/me", headers=auth)
        assert me.status_code == 200 and me.json()["open"] is False and me.json()["role"] == "admin"
        assert remote.get(f"{BASE}/datasets", headers=auth).status_code == 200
        assert local.get(f"{BASE}/tokens", headers=auth).json()["total"] == 1
        assert secret not in local.get(f"{BASE}/tokens", headers=auth).text


@pytest.mark.both_apps
def test_settings_auth_required_refuses_anonymous_local_clients_without_any_token(
    tmp_path: Path, app_class: type
) -> None:
    """With auth_required, a server without tokens still answers 401 to a local client."""
    settings = replace(Settings(data_dir=tmp_path / "data"), auth_required=True, max_concurrent_fits=1)
    with local_client(build_app(settings, app_class)) as local:
        refused = local.get(f"{BASE}/datasets")
        assert_problem(refused, 401)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert local.get(f"{BASE}/ping").status_code == 200
