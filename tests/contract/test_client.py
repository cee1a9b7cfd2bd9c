"""kmeans.client against the app in-process (connexion's test client is an httpx.Client)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from kmeans import client as sdk
from kmeans.client import KMeansClient
from kmeans.config import Settings
from server import build_app

ROOT = Path(__file__).resolve().parents[2]
POINTS = [[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]]
# Each operation of api.yaml that the client covers, and its method.
METHODS = {
    "ping": "ping",
    "upload": "upload",
    "fit": "fit",
    "predict": "classic_predict",
    "create_dataset": "create_dataset",
    "list_datasets": "list_datasets",
    "get_dataset": "get_dataset",
    "delete_dataset": "delete_dataset",
    "get_dataset_rows": "rows",
    "get_dataset_columns": "dataset_columns",
    "create_model": "create_model",
    "list_models": "list_models",
    "get_model": "get_model",
    "delete_model": "delete_model",
    "cancel_model": "cancel_model",
    "pause_model": "pause_model",
    "resume_model": "resume_model",
    "copy_model": "copy_model",
    "cancel_sweep": "cancel_sweep",
    "delete_sweep": "delete_sweep",
    "list_jobs": "list_jobs",
    "get_model_labels": "labels",
    "get_model_centers": "centers",
    "predict_with_model": "predictions",
    "get_model_plot": "plot",
    "patch_model": "name_clusters",
    "get_model_profile": "profile",
    "get_model_profile_plot": "profile_plot",
    "export_model": "export_model",
    "import_model": "import_model",
    "push_model_data": "push_data",
    "list_model_versions": "list_versions",
    "get_model_version": "get_version",
    "restore_model_version": "restore_version",
    "create_sweep": "create_sweep",
    "list_sweeps": "list_sweeps",
    "get_sweep": "get_sweep",
    "get_sweep_plot": "sweep_plot",
    "whoami": "whoami",
    "create_project": "create_project",
    "list_projects": "list_projects",
    "get_project": "get_project",
    "delete_project": "delete_project",
    "create_token": "create_token",
    "list_tokens": "list_tokens",
    "get_token": "get_token",
    "revoke_token": "revoke_token",
    "create_evaluation": "create_evaluation",
    "list_evaluations": "list_evaluations",
    "get_evaluation": "get_evaluation",
    "cancel_evaluation": "cancel_evaluation",
    "delete_evaluation": "delete_evaluation",
    "create_comparison": "compare_models",
    "get_model_events": "model_events",
    "get_sweep_events": "sweep_events",
    "get_evaluation_events": "evaluation_events",
    "get_events": "project_events",
    "create_scoring": "create_scoring",
    "list_scorings": "list_scorings",
    "get_scoring": "get_scoring",
    "cancel_scoring": "cancel_scoring",
    "delete_scoring": "delete_scoring",
    "get_scoring_result": "scoring_rows",  # and download_scoring for CSV / Parquet
    "get_scoring_events": "scoring_events",
    "create_user": "create_user",
    "list_users": "list_users",
    "get_user": "get_user",
    "update_user": "update_user",
    "delete_user": "delete_user",
    "change_password": "change_password",
    "sign_in": "sign_in",
    "refresh_token": "refresh",
    "sign_out": "sign_out",
}
NOT_IN_THE_CLIENT: set[str] = set()


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch):
    """A KMEANS_TOKEN of the person running the tests must not leak into them."""
    monkeypatch.delenv("KMEANS_TOKEN", raising=False)


@pytest.fixture
def km(client) -> KMeansClient:
    return KMeansClient("http://testserver", http=client)


@pytest.fixture
def model_csv(tmp_path: Path) -> Path:
    path = tmp_path / "points.csv"
    path.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in POINTS))
    return path


def fitted(km: KMeansClient, k: int = 2) -> dict:
    dataset = km.create_dataset(POINTS, columns=["x", "y"], name="points")
    model = km.create_model(dataset["id"], {"n_clusters": k, "random_state": 0})
    return km.wait_for_model(model["id"], timeout=30, poll=0.02)


def test_every_operation_has_a_client_method():
    spec = yaml.safe_load((ROOT / "api.yaml").read_text())
    ids = {op["operationId"] for item in spec["paths"].values() for op in item.values() if isinstance(op, dict)}
    assert set(METHODS) <= ids, set(METHODS) - ids
    missing = ids - set(METHODS) - NOT_IN_THE_CLIENT
    assert not missing, f"add a KMeansClient method (and a METHODS entry here) for {sorted(missing)}"
    for method in METHODS.values():
        assert callable(getattr(KMeansClient, method)), method


def test_ping(km):
    assert km.ping()["status"] == "ok"


def test_dataset_from_a_path_streams_it_with_progress(km, model_csv: Path):
    calls = []
    dataset = km.create_dataset(model_csv, progress=lambda sent, total: calls.append((sent, total)))
    assert dataset["name"] == "points.csv" and dataset["rows"] == 6 and dataset["columns"] == ["x", "y"]
    size = model_csv.stat().st_size
    assert calls[0] == (0, size) and calls[-1] == (size, size)
    assert km.get_dataset(dataset["id"]) == dataset


def test_a_large_file_is_read_in_chunks_not_whole(km, tmp_path: Path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"".join(b"%d,%d\n" % (i, i % 7) for i in range(90_000)))  # ~0.8 MB
    reads: list[int] = []

    class Spy(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            reads.append(size)
            return super().read(size)

    with Spy(path, "rb") as handle:
        dataset = km.create_dataset(handle, name="big")
    assert dataset["rows"] == 90_000 and dataset["name"] == "big"
    assert len(reads) > 3 and all(0 < size <= sdk.CHUNK_BYTES for size in reads)


def test_datasets_from_bytes_rows_and_file_objects(km, model_csv: Path):
    from_bytes = km.create_dataset(b"1,2\n3,4\n", name="b")
    assert (from_bytes["name"], from_bytes["rows"], from_bytes["columns"]) == ("b", 2, ["x1", "x2"])
    from_rows = km.create_dataset(POINTS, columns=["a", "b"], name="r")
    assert (from_rows["rows"], from_rows["columns"]) == (6, ["a", "b"])
    with open(model_csv, "rb") as handle:
        assert km.create_dataset(handle)["name"] == "points.csv"
    with pytest.raises(TypeError):
        km.create_dataset(b"1,2\n", columns=["a", "b"])


def test_list_rows_and_delete_datasets(km):
    ids = [km.create_dataset(POINTS, name=f"d{i}")["id"] for i in range(3)]
    page = km.list_datasets(limit=2)
    assert page["total"] == 3 and len(page["items"]) == 2
    assert [d["id"] for d in km.iter_datasets(page_size=1)] == ids[::-1]
    rows = km.rows(ids[0], offset=1, limit=2)
    assert rows["items"] == [[1.0, 4.0], [1.0, 0.0]] and rows["total"] == 6
    km.delete_dataset(ids[0])
    with pytest.raises(sdk.NotFound) as caught:
        km.get_dataset(ids[0])
    assert caught.value.status == 404
    assert caught.value.detail == f"no dataset with id {ids[0]}"
    assert caught.value.problem["status"] == 404 and caught.value.problem["title"] == "Not Found"


def test_model_flow(km, model_csv: Path):
    model = fitted(km)
    assert model["status"] == "succeeded"
    labels = km.labels(model["id"])
    assert len(labels) == 6 and labels[0] == labels[1] != labels[3]
    centers = km.centers(model["id"])
    assert centers["columns"] == ["x", "y"] and sorted(centers["centers"]) == [[1.0, 2.0], [10.0, 2.0]]
    assert km.predict(model["id"], [[0, 0], [12, 3]]) == [labels[0], labels[3]]
    assert km.predict(model["id"], b"0,0\n12,3\n") == [labels[0], labels[3]]
    assert km.predict(model["id"], model_csv) == labels
    assert [m["id"] for m in km.list_models(dataset_id=model["dataset_id"])["items"]] == [model["id"]]
    assert [m["id"] for m in km.iter_models(status="succeeded")] == [model["id"]]
    assert km.get_model(model["id"])["id"] == model["id"]
    km.delete_model(model["id"])
    with pytest.raises(sdk.NotFound):
        km.labels(model["id"])


def test_classic_flow(km, model_csv: Path):
    upload = km.upload(model_csv)
    assert upload["job_id"] == 0 and upload["filename"] == "points.csv"
    fit = km.fit(0, {"n_clusters": 2, "random_state": 0})
    assert len(fit["labels"]) == 6 and fit["model_id"].startswith("m_")
    assert km.classic_predict(0, b"0,0\n12,3\n") == [fit["labels"][2], fit["labels"][3]]
    with pytest.raises(sdk.NotFound, match="no upload with job_id 7"):
        km.fit(7)


def test_wait_for_model_is_bounded(km, monkeypatch):
    running = {"id": "m_1", "status": "running"}
    seen = []
    monkeypatch.setattr(km, "get_model", lambda model_id: running)
    with pytest.raises(TimeoutError, match="m_1 is still running"):
        km.wait_for_model("m_1", timeout=0.1, poll=0.02, on_update=seen.append)
    assert 2 <= len(seen) <= 10


@pytest.mark.parametrize(
    ("call", "error", "status"),
    [
        (lambda km: km.list_datasets(limit=0), sdk.BadRequest, 400),
        (lambda km: km.create_dataset(b"1,2\n3,abc\n"), sdk.Unprocessable, 422),
        (lambda km: km.create_dataset(b"1,2\n" * 300_000), sdk.PayloadTooLarge, 413),
        (lambda km: km.request("POST", "/datasets", content=b"x", headers={"Content-Type": "text/plain"}),
         sdk.UnsupportedMediaType, 415),
    ],
)
def test_errors_are_typed_and_carry_the_problem(km, call, error, status):
    with pytest.raises(error) as caught:
        call(km)
    assert isinstance(caught.value, sdk.ApiError)
    assert caught.value.status == status == caught.value.problem["status"]
    assert caught.value.detail == caught.value.problem["detail"]


def test_unprocessable_csv_names_the_row_and_column(km):
    with pytest.raises(sdk.Unprocessable) as caught:
        km.create_dataset(b"1,2\n3,abc\n")
    assert (caught.value.problem["row"], caught.value.problem["column"]) == (2, 2)


def test_conflict_for_labels_of_a_model_that_did_not_succeed(km):
    dataset = km.create_dataset(POINTS)
    model = km.create_model(dataset["id"], {"n_clusters": 2})
    with contextlib.suppress(sdk.Conflict):  # 409 when the fit has already ended
        assert km.cancel_model(model["id"])["status"] == "cancelled"
    if km.wait_for_model(model["id"], timeout=30, poll=0.02)["status"] == "succeeded":
        pytest.skip("the fit finished before it could be cancelled")
    with pytest.raises(sdk.Conflict):
        km.labels(model["id"])


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, sdk.BadRequest), (401, sdk.Unauthorized), (403, sdk.Forbidden), (404, sdk.NotFound),
        (409, sdk.Conflict), (413, sdk.PayloadTooLarge), (415, sdk.UnsupportedMediaType),
        (422, sdk.Unprocessable), (500, sdk.ServerError), (503, sdk.ServerError), (429, sdk.TooManyRequests),
        (418, sdk.ApiError),
    ],
)
def test_error_classes_by_status(status: int, error: type):
    problem = {"type": "about:blank", "title": "T", "status": status, "detail": "what went wrong"}
    raised = sdk.error_for(httpx.Response(status, json=problem))
    assert type(raised) is error and raised.status == status and raised.detail == "what went wrong"


def test_an_error_without_a_problem_document_keeps_the_body():
    raised = sdk.error_for(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert isinstance(raised, sdk.ServerError) and raised.detail == "<html>Bad Gateway</html>"


def test_an_unreachable_server_is_cannot_connect():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with KMeansClient(f"http://127.0.0.1:{port}", timeout=5) as km, pytest.raises(sdk.CannotConnect) as caught:
            km.ping()
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_predictions_plot_export_and_import(km):
    model = fitted(km)
    details = km.predictions(model["id"], [[0, 0], [12, 3]], distances=True)
    assert details["labels"] == km.predict(model["id"], [[0, 0], [12, 3]]) and len(details["distances"]) == 2
    assert km.plot(model["id"]).startswith(b"\x89PNG")
    document = km.export_model(model["id"])
    imported = km.import_model(document)
    assert imported["id"] != model["id"] and imported["status"] == "succeeded"
    assert km.predict(imported["id"], [[0, 0], [12, 3]]) == details["labels"]


def test_names_and_profiles(km):
    model = fitted(km)
    low = km.predict(model["id"], [[0, 0]])[0]
    named = km.name_clusters(model["id"], {low: "near zero", 1 - low: "far"})
    assert named["cluster_names"] == {str(low): "near zero", str(1 - low): "far"}
    assert km.name_clusters(model["id"], {1 - low: None})["cluster_names"] == {str(low): "near zero"}
    assert km.predictions(model["id"], [[0, 0]])["label_names"] == ["near zero"]
    profile = km.profile(model["id"])
    cluster = profile["clusters"][low]
    x_values = [p[0] for p in POINTS if km.predict(model["id"], [p])[0] == low]
    assert cluster["name"] == "near zero" and cluster["size"] == len(x_values)
    assert next(f for f in cluster["features"] if f["name"] == "x")["mean"] == pytest.approx(np.mean(x_values))
    assert km.profile_csv(model["id"]).startswith("cluster,name,size,share,feature,")
    assert km.profile_plot(model["id"]).startswith(b"\x89PNG")
    with pytest.raises(sdk.Unprocessable) as caught:
        km.name_clusters(model["id"], {5: "none"})
    assert "'5'" in caught.value.detail


def test_minibatch_versions(km):
    dataset = km.create_dataset(POINTS, columns=["x", "y"])
    model = km.create_model(dataset["id"], {"n_clusters": 2, "method": "minibatch", "random_state": 0})
    model = km.wait_for_model(model["id"], timeout=30, poll=0.02)
    assert model["status"] == "succeeded", model["error"]
    pushed = km.push_data(model["id"], [[0.5, 1.5], [9.5, 2.5]])
    assert pushed["version"] == 2
    assert km.push_data(model["id"], b"0.5,1.5\n")["version"] == 3
    assert [v["version"] for v in km.list_versions(model["id"])["items"]] == [1, 2, 3]
    assert km.get_version(model["id"], 1)["source"] == "fit"
    assert km.restore_version(model["id"], 1)["version"] == 4
    assert len(km.predict(model["id"], [[0, 0]], version=2)) == 1


def test_sweeps(km):
    dataset = km.create_dataset(POINTS)
    sweep = km.create_sweep(dataset["id"], 1, 3, {"random_state": 0})
    sweep = km.wait_for_sweep(sweep["id"], timeout=60, poll=0.05)
    assert sweep["status"] == "succeeded" and [r["k"] for r in sweep["results"]] == [1, 2, 3]
    assert [s["id"] for s in km.list_sweeps(dataset_id=dataset["id"])["items"]] == [sweep["id"]]
    assert km.get_sweep(sweep["id"])["id"] == sweep["id"]
    assert km.sweep_plot(sweep["id"]).startswith(b"\x89PNG")


def test_evaluations_and_comparisons(km):
    from sklearn.metrics import adjusted_rand_score

    rows = [{"x": x, "y": y, "group": "left" if x < 5 else "right"} for x, y in POINTS + [[2, 2], [9, 1]]]
    dataset = km.create_dataset(rows)
    model = km.wait_for_model(km.create_model(dataset["id"], {"n_clusters": 2, "random_state": 0,
                                                              "features": ["x", "y"]})["id"], timeout=30, poll=0.02)
    evaluation = km.create_evaluation(model["id"], dataset["id"], "group")
    evaluation = km.wait_for_evaluation(model["id"], evaluation["id"], timeout=60, poll=0.05)
    assert evaluation["status"] == "succeeded"
    labels = km.labels(model["id"])
    truth = [r["group"] for r in rows]
    assert evaluation["result"]["labels"]["adjusted_rand"] == pytest.approx(adjusted_rand_score(truth, labels))
    assert evaluation["result"]["labels"]["purity"] == 1.0
    assert [e["id"] for e in km.list_evaluations(model["id"])["items"]] == [evaluation["id"]]
    assert km.get_evaluation(model["id"], evaluation["id"])["result"] == evaluation["result"]
    with pytest.raises(sdk.Conflict):
        km.cancel_evaluation(model["id"], evaluation["id"])
    with pytest.raises(sdk.Unprocessable) as caught:
        km.create_evaluation(model["id"], dataset["id"], "colour")
    assert "'colour'" in caught.value.detail
    other = km.wait_for_model(km.create_model(dataset["id"], {"n_clusters": 3, "random_state": 0,
                                                              "features": ["x", "y"]})["id"], timeout=30, poll=0.02)
    comparison = km.compare_models(model["id"], other["id"])
    assert comparison["adjusted_rand"] == pytest.approx(adjusted_rand_score(labels, km.labels(other["id"])))
    assert len(comparison["matching"]) == 2 and len(comparison["unmatched_other_clusters"]) == 1
    km.delete_evaluation(model["id"], evaluation["id"])
    with pytest.raises(sdk.NotFound):
        km.get_evaluation(model["id"], evaluation["id"])
def test_scorings(km, tmp_path: Path):
    import pyarrow.parquet as pq

    model = fitted(km)
    dataset = km.create_dataset(POINTS + [[30, 30]], columns=["x", "y"])
    scoring = km.create_scoring(model["id"], dataset["id"], threshold=3.0)
    scoring = km.wait_for_scoring(model["id"], scoring["id"], timeout=60, poll=0.05)
    assert scoring["status"] == "succeeded" and scoring["rows_scored"] == 7 and scoring["anomalies"] == 1
    expected = km.predictions(model["id"], POINTS + [[30, 30]], distances=True, threshold=3.0)
    rows = list(km.iter_scoring_rows(model["id"], scoring["id"], page_size=3))
    assert [r["label"] for r in rows] == expected["labels"]
    assert [r["distance"] for r in rows] == expected["distances"]
    assert [r["anomaly"] for r in rows] == expected["anomalies"] == [False] * 6 + [True]
    assert km.scoring_rows(model["id"], scoring["id"], offset=6, limit=5)["items"] == rows[6:]
    assert [s["id"] for s in km.list_scorings(model["id"])["items"]] == [scoring["id"]]
    assert km.get_scoring(model["id"], scoring["id"])["cluster_sizes"] == scoring["cluster_sizes"]

    seen: list[int] = []
    written = km.download_scoring(model["id"], scoring["id"], tmp_path / "out.csv",
                                  progress=lambda n, _: seen.append(n))
    text = (tmp_path / "out.csv").read_text()
    assert written == len(text.encode()) == seen[-1]
    assert text.splitlines()[0] == "row,label,distance,anomaly" and text.splitlines()[7].endswith(",true")
    km.download_scoring(model["id"], scoring["id"], tmp_path / "out.parquet", format="parquet")
    assert pq.read_table(tmp_path / "out.parquet").to_pylist() == rows
    with pytest.raises(ValueError, match="csv or parquet"):
        km.download_scoring(model["id"], scoring["id"], tmp_path / "x", format="xlsx")
    with pytest.raises(sdk.Conflict, match="already succeeded"):
        km.cancel_scoring(model["id"], scoring["id"])
    with pytest.raises(sdk.Unprocessable, match="'y'"):
        km.create_scoring(model["id"], km.create_dataset([[1, 2]], columns=["x", "z"])["id"])
    km.delete_scoring(model["id"], scoring["id"])
    with pytest.raises(sdk.NotFound):
        km.download_scoring(model["id"], scoring["id"], tmp_path / "gone.csv")
    assert km.list_scorings(model["id"])["total"] == 0


# -- bearer tokens -------------------------------------------------------------------------------


@pytest.fixture
def secured(settings: Settings) -> Iterator[tuple[httpx.Client, str]]:
    """A test client of an app that has an admin token, from another machine (so only a token
    lets it in, not being local), and that token's secret."""
    app = build_app(settings)
    with app.test_client() as http:
        _, secret = app.service.access.create_token("admin", name="test admin")
        yield http, secret


def as_(secured: tuple[httpx.Client, str], token: str | None) -> KMeansClient:
    """A client of the secured app with ``token`` (None: from KMEANS_TOKEN)."""
    return KMeansClient("http://testserver", token=token, http=secured[0])


def test_the_token_is_sent_as_a_bearer_header_on_every_request(model_csv: Path):
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("Authorization")))
        return httpx.Response(201, json={"id": "ds_1"})

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        km = KMeansClient("http://server", token="kms_abc", http=http)
        km.create_dataset(model_csv)
        km.create_dataset(POINTS)
        km.upload(b"1,2\n")
        km.whoami()
        assert KMeansClient("http://server", token="  kms_abc\n", http=http).whoami()  # whitespace of a pasted token
        KMeansClient("http://server", token="", http=http).whoami()
    assert [auth for _, auth in seen] == ["Bearer kms_abc"] * 5 + [None]


def test_a_token_is_accepted(secured):
    me = as_(secured, secured[1]).whoami()
    assert me["role"] == "admin" and me["project"] is None and me["open"] is False
    assert me["token_id"].startswith("tok_")
    assert as_(secured, secured[1]).list_datasets()["total"] == 0


def test_kmeans_token_from_the_environment(secured, monkeypatch):
    monkeypatch.setenv("KMEANS_TOKEN", secured[1])
    assert as_(secured, None).whoami()["role"] == "admin"
    with pytest.raises(sdk.Unauthorized):  # token="" sends none, whatever the environment says
        as_(secured, "").whoami()


def test_no_token_is_unauthorized(secured):
    with pytest.raises(sdk.Unauthorized) as caught:
        as_(secured, None).list_datasets()
    assert isinstance(caught.value, sdk.ApiError) and caught.value.status == 401 == caught.value.problem["status"]
    assert "requires a bearer token" in caught.value.detail
    assert caught.value.response.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_unknown_token_is_unauthorized_and_never_shown(secured):
    km = as_(secured, "kms_not-a-real-token")
    with pytest.raises(sdk.Unauthorized) as caught:
        km.whoami()
    assert caught.value.detail == "the bearer token is not valid"
    for text in (str(caught.value), repr(caught.value), repr(km), repr(caught.value.problem)):
        assert "not-a-real-token" not in text
    assert repr(km) == "KMeansClient('http://testserver', token=<set>)"


def test_a_token_that_cannot_be_sent_is_refused_before_any_request():
    with pytest.raises(sdk.InvalidToken) as caught:
        KMeansClient("http://127.0.0.1:1", token="kms_secret with a space")
    assert isinstance(caught.value, ValueError) and "secret" not in str(caught.value)


def test_a_guest_may_not_create_a_dataset(secured):
    admin = as_(secured, secured[1])
    guest = as_(secured, admin.create_token("guest")["token"])
    assert guest.list_datasets()["total"] == 0  # a guest reads
    with pytest.raises(sdk.Forbidden) as caught:
        guest.create_dataset(POINTS)
    assert caught.value.status == 403 and "needs the contributor role" in caught.value.detail
    with pytest.raises(sdk.Forbidden):
        guest.list_tokens()


def test_projects_and_tokens_round_trip(secured):
    admin = as_(secured, secured[1])
    project = admin.create_project("team-a", "churn")
    assert (project["id"], project["description"]) == ("team-a", "churn")
    assert admin.get_project("team-a") == project
    assert "team-a" in [p["id"] for p in admin.list_projects()["items"]]
    with pytest.raises(sdk.Conflict):
        admin.create_project("team-a")

    created = admin.create_token("contributor", project="team-a", name="ci", expires_in=dt.timedelta(days=1))
    secret = created["token"]
    assert secret.startswith("kms_") and created["role"] == "contributor" and created["project"] == "team-a"
    assert created["name"] == "ci" and created["status"] == "active" and created["expires_at"]

    contributor = as_(secured, secret)
    me = contributor.whoami()
    assert (me["role"], me["project"], me["token_id"]) == ("contributor", "team-a", created["id"])
    dataset = contributor.create_dataset(POINTS, name="pts")
    assert dataset["project"] == "team-a"
    assert contributor.create_dataset(b"1,2\n3,4\n", project="team-a")["project"] == "team-a"
    with pytest.raises(sdk.Forbidden):  # a project token works in its own project only
        contributor.create_dataset(POINTS, project="default")
    assert contributor.list_datasets()["total"] == 2
    assert admin.list_datasets(project="team-a")["total"] == 2 and admin.list_datasets(project="default")["total"] == 0
    assert [d["id"] for d in admin.iter_datasets(project="team-a")][-1] == dataset["id"]

    listed = admin.list_tokens(project="team-a")["items"]
    assert [t["id"] for t in listed] == [created["id"]]
    assert all("token" not in t for t in admin.list_tokens()["items"])
    assert "token" not in admin.get_token(created["id"])

    with pytest.raises(sdk.Conflict):  # the project still has datasets and a live token
        admin.delete_project("team-a")
    revoked = admin.revoke_token(created["id"])
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    with pytest.raises(sdk.Unauthorized) as caught:
        contributor.list_datasets()
    assert caught.value.detail == "the bearer token was revoked"
    assert secret not in str(caught.value)

    for item in admin.list_datasets(project="team-a")["items"]:
        admin.delete_dataset(item["id"])
    admin.delete_project("team-a")
    with pytest.raises(sdk.NotFound):
        admin.get_project("team-a")


def test_lists_and_imports_take_a_project(secured):
    admin = as_(secured, secured[1])
    admin.create_project("team-b")
    model = fitted(admin)
    document = admin.export_model(model["id"])
    imported = admin.import_model(document, project="team-b")
    assert imported["project"] == "team-b" and model["project"] == "default"
    assert [m["id"] for m in admin.list_models(project="team-b")["items"]] == [imported["id"]]
    assert admin.list_models(project="default")["total"] == 1
    assert admin.list_sweeps(project="team-b")["total"] == 0


def test_a_mixed_table_with_csv_options_ids_and_column_statistics(km, tmp_path: Path):
    path = tmp_path / "customers.csv"
    path.write_bytes((ROOT / "examples" / "customers.csv").read_bytes())
    dataset = km.create_dataset(path, decimal=",", id_column="customer_id", na_values=["", "NA"])
    assert dataset["id_column"] == "customer_id" and dataset["rows"] == 24
    columns = {c["name"]: c for c in km.dataset_columns(dataset["id"])}
    assert columns["spend"]["missing"] == 2 and columns["region"]["distinct"] == 3
    model = km.wait_for_model(km.create_model(dataset["id"], {"n_clusters": 2, "random_state": 0})["id"], timeout=30)
    answer = km.predictions(model["id"], (ROOT / "examples" / "customers_new.csv").read_bytes(), decimal=",")
    assert answer["ids"] == ["N001", "N002", "N003"] and answer["unknown_categories"] == {"region": 1}
    rows = [{"spend": 99.5, "visits": 2, "tenure_years": 1.2, "segment": "bronze", "region": "north"}]
    assert km.predict(model["id"], rows) == answer["labels"][:1]
