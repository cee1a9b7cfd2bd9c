"""Bad input: a 4xx problem+json whose detail names the problem, never a 500, nothing harmed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_helpers import (
    CSV,
    JSON,
    MODEL_CSV,
    PREDICT_CSV,
    assert_problem,
    csv_lines,
    leftovers,
    upload,
)
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app
from tests.conftest import local_client

LIMIT = 1_000_000  # max_upload_bytes of the settings fixture
TOO_LARGE = b"1,2\n" * 300_000  # 1.2 MB of valid CSV: only its size is wrong
UNKNOWN_DATASET = "ds_0000000000000000"
UNKNOWN_MODEL = "m_0000000000000000"


@dataclass
class Stored:
    """An app shared by this module's tests, and what it held before any of them ran."""

    client: TestClient
    settings: Settings
    dataset_id: str
    model_id: str


@pytest.fixture(scope="module")
def stored(tmp_path_factory, app_class: type) -> Iterator[Stored]:
    """One app for the whole module (bad requests must not change it): an upload with a fitted model."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("bad_input") / "data", max_upload_bytes=LIMIT, max_concurrent_fits=2
    )
    with local_client(build_app(settings, app_class)) as client:
        job = upload(client)
        assert job.status_code == 200, job.text
        fitted = client.post(
            "/kmeans/fit",
            json={"job_id": 0, "model_params": {"n_clusters": 2, "random_state": 0}},
            headers={"accept": JSON},
        )
        assert fitted.status_code == 200, fitted.text
        yield Stored(client, settings, job.json()["dataset_id"], fitted.json()["model_id"])


@pytest.fixture
def api(stored: Stored) -> TestClient:
    return stored.client


@pytest.fixture
def unharmed(stored: Stored) -> Callable[[], None]:
    """A check that everything stored before the test is still there and still answers the same."""
    client, data_dir = stored.client, stored.settings.data_dir

    def snapshot() -> dict:
        predicted = client.post(
            "/kmeans/predict", files={"file": ("predict.csv", PREDICT_CSV, CSV)}, data={"job_id": "0"}
        )
        predictions = client.post(f"/kmeans/models/{stored.model_id}/predictions", json={"data": [[0, 0], [12, 3]]})
        return {
            "datasets": client.get("/kmeans/datasets").json()["total"],
            "models": client.get("/kmeans/models").json()["total"],
            "job_0": upload(client).json(),
            "classic_predict": csv_lines(predicted),
            "predictions": predictions.json()["labels"],
            "files": sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*.npy")),
        }

    before = snapshot()
    assert len(before["classic_predict"]) == 2

    def check() -> None:
        assert snapshot() == before
        assert leftovers(data_dir) == []

    return check


def post_csv_both_ways(client: TestClient, content: bytes) -> list:
    """The same CSV through the classic multipart /upload and as a raw text/csv dataset."""
    return [
        upload(client, content, "bad.csv"),
        client.post("/kmeans/datasets", content=content, headers={"Content-Type": CSV}),
    ]


# -- CSV content ---------------------------------------------------------------------------


def test_empty_file_is_422(api, unharmed):
    for response in post_csv_both_ways(api, b""):
        assert_problem(response, 422, "empty")
    unharmed()


def test_file_of_blank_lines_is_422(api, unharmed):
    for response in post_csv_both_ways(api, b"\n\n   \n\r\n"):
        assert_problem(response, 422, "empty")
    unharmed()


@pytest.mark.both_apps
def test_non_numeric_cell_is_422_naming_row_and_column(api, unharmed):
    for content in (b"1,2\n3,4\n5,abc\n", b"x,y\n1,2\n3,abc\n"):
        for response in post_csv_both_ways(api, content):
            problem = assert_problem(response, 422, "row 3, column 2", "abc")
            assert (problem["row"], problem["column"]) == (3, 2)
    unharmed()


def test_row_with_too_many_values_is_422_naming_the_row(api, unharmed):
    for response in post_csv_both_ways(api, b"1,2\n3,4\n5,6,7\n"):
        problem = assert_problem(response, 422, "row 3")
        assert problem["row"] == 3
    unharmed()


def test_row_with_too_few_values_is_422_naming_the_row(api, unharmed):
    for response in post_csv_both_ways(api, b"1,2\n3,4\n5\n6,7\n"):
        problem = assert_problem(response, 422, "row 3")
        assert problem["row"] == 3
    unharmed()


@pytest.mark.parametrize(
    ("content", "cell", "fragment"),
    [(b"1,2\nNaN,4\n", (2, 1), "NaN"), (b"1,2\n,4\n5,6\n", (2, 1), "empty"), (b"1,2\n3,gold\n", (2, 2), "gold")],
)
def test_classic_upload_refuses_a_missing_or_text_cell_naming_it(api, unharmed, content, cell, fragment):
    problem = assert_problem(upload(api, content, "bad.csv"), 422, f"row {cell[0]}, column {cell[1]}", fragment)
    assert (problem["row"], problem["column"]) == cell
    unharmed()


@pytest.mark.parametrize("content", [b"1,2\nNaN,4\n", b"1,2\n,4\n5,6\n", b"1,2\nNA,4\n5,6\n"])
def test_a_dataset_takes_na_and_empty_cells_as_missing_values(api, content):
    response = api.post("/kmeans/datasets", content=content, headers={"Content-Type": CSV})
    assert response.status_code == 201, response.text
    assert [(c["name"], c["type"], c["missing"]) for c in response.json()["schema"]] == [
        ("x1", "numeric", 1),
        ("x2", "numeric", 0),
    ]


def test_header_without_data_rows_is_422(api, unharmed):
    for response in post_csv_both_ways(api, b"x,y\n"):
        assert_problem(response, 422, "header", "no data rows")
    unharmed()


def test_duplicate_header_name_is_422_naming_it(api, unharmed):
    for response in post_csv_both_ways(api, b"x,x\n1,2\n"):
        problem = assert_problem(response, 422, "'x'", "twice")
        assert (problem["row"], problem["column"]) == (1, 2)
    unharmed()


def test_non_utf8_bytes_are_422(api, unharmed):
    for content in (b"1,2\n3,\xff\n", b"x,caf\xe9\n1,2\n", "1,2\n".encode("utf-16")):
        for response in post_csv_both_ways(api, content):
            assert_problem(response, 422, "UTF-8")
    unharmed()


def test_header_narrower_than_the_rows_is_422(api, unharmed):
    for response in post_csv_both_ways(api, b"x,y\n1,2,3\n4,5,6\n"):
        problem = assert_problem(response, 422, "row 2")
        assert problem["row"] == 2
    unharmed()


def test_number_with_underscore_is_422_naming_row_and_column(api, unharmed):
    for content in (b"1,2\n3,1_000\n", "1,2\n3,\uff14\n".encode()):  # also a full-width digit
        for response in post_csv_both_ways(api, content):
            problem = assert_problem(response, 422, "row 2, column 2")
            assert (problem["row"], problem["column"]) == (2, 2)
    unharmed()


def test_csv_with_cr_only_line_ends_names_row_and_column(api, unharmed):
    for response in post_csv_both_ways(api, b"x,y\r1,2\r3,oops\r"):
        problem = assert_problem(response, 422, "row 3, column 2")
        assert (problem["row"], problem["column"]) == (3, 2)
    unharmed()


# -- model parameters ----------------------------------------------------------------------


@pytest.mark.both_apps
def test_unknown_model_param_is_400_naming_it(api, stored, unharmed):
    dataset_id = stored.dataset_id
    responses = [
        api.post("/kmeans/fit", json={"job_id": 0, "model_params": {"n_clusters": 2, "bogus": 1}}),
        api.post("/kmeans/models", json={"dataset_id": dataset_id, "params": {"bogus": 1}}),
    ]
    for response in responses:
        assert_problem(response, 400, "bogus")
    unharmed()


def test_n_clusters_string_is_400_naming_n_clusters(api, stored, unharmed):
    dataset_id = stored.dataset_id
    responses = [
        api.post("/kmeans/fit", json={"job_id": 0, "model_params": {"n_clusters": "abc"}}),
        api.post("/kmeans/models", json={"dataset_id": dataset_id, "params": {"n_clusters": "abc"}}),
    ]
    for response in responses:
        assert_problem(response, 400, "n_clusters", "abc")
    unharmed()


def test_n_clusters_zero_is_400(api, stored, unharmed):
    dataset_id = stored.dataset_id
    responses = [
        api.post("/kmeans/fit", json={"job_id": 0, "model_params": {"n_clusters": 0}}),
        api.post("/kmeans/models", json={"dataset_id": dataset_id, "params": {"n_clusters": 0}}),
    ]
    for response in responses:
        assert_problem(response, 400, "n_clusters")
    unharmed()


def test_n_clusters_larger_than_row_count_is_422_naming_n_clusters(api, stored, unharmed):
    dataset_id = stored.dataset_id
    responses = [
        api.post("/kmeans/fit", json={"job_id": 0, "model_params": {"n_clusters": 7}}),
        api.post("/kmeans/models", json={"dataset_id": dataset_id, "params": {"n_clusters": 7}}),
    ]
    for response in responses:
        problem = assert_problem(response, 422, "n_clusters", "7", "6")
        assert problem["parameter"] == "n_clusters"
    unharmed()


def test_model_param_outside_its_enum_is_400_naming_it(api, stored, unharmed):
    dataset_id = stored.dataset_id
    response = api.post("/kmeans/models", json={"dataset_id": dataset_id, "params": {"init": "bogus"}})
    assert_problem(response, 400, "init")
    unharmed()


# -- predictions of the wrong width --------------------------------------------------------


def test_classic_predict_with_wrong_width_is_422(api, unharmed):
    response = api.post("/kmeans/predict", files={"file": ("p.csv", b"0,0,0\n1,1,1\n", CSV)}, data={"job_id": "0"})
    assert_problem(response, 422, "3 columns", "2")
    unharmed()


@pytest.mark.both_apps
def test_predictions_with_wrong_width_are_422(api, stored, unharmed):
    url = f"/kmeans/models/{stored.model_id}/predictions"
    responses = [
        api.post(url, content=b"0,0,0\n", headers={"Content-Type": CSV}),
        api.post(url, files={"file": ("p.csv", b"0\n1\n", CSV)}),
        api.post(url, json={"data": [[0, 0, 0]]}),
    ]
    for response in responses:
        assert_problem(response, 422, "columns", "fitted on 2")
    unharmed()


def test_json_predictions_with_ragged_rows_are_422(api, stored, unharmed):
    response = api.post(f"/kmeans/models/{stored.model_id}/predictions", json={"data": [[0, 0], [1]]})
    problem = assert_problem(response, 422, "row 2")
    assert problem["row"] == 2
    unharmed()


# -- unknown ids ---------------------------------------------------------------------------


def test_unknown_dataset_id_is_404(api, unharmed):
    responses = [
        api.get(f"/kmeans/datasets/{UNKNOWN_DATASET}"),
        api.delete(f"/kmeans/datasets/{UNKNOWN_DATASET}"),
        api.get(f"/kmeans/datasets/{UNKNOWN_DATASET}/rows"),
        api.post("/kmeans/models", json={"dataset_id": UNKNOWN_DATASET, "params": {"n_clusters": 2}}),
    ]
    for response in responses:
        assert_problem(response, 404, UNKNOWN_DATASET)
    unharmed()


@pytest.mark.both_apps
def test_unknown_model_id_is_404(api, unharmed):
    responses = [
        api.get(f"/kmeans/models/{UNKNOWN_MODEL}"),
        api.delete(f"/kmeans/models/{UNKNOWN_MODEL}"),
        api.get(f"/kmeans/models/{UNKNOWN_MODEL}/labels"),
        api.get(f"/kmeans/models/{UNKNOWN_MODEL}/centers"),
        api.post(f"/kmeans/models/{UNKNOWN_MODEL}/predictions", json={"data": [[0, 0]]}),
        api.post(f"/kmeans/models/{UNKNOWN_MODEL}/predictions", content=b"0,0\n", headers={"Content-Type": CSV}),
    ]
    for response in responses:
        assert_problem(response, 404, UNKNOWN_MODEL)
    unharmed()


# -- size limit ----------------------------------------------------------------------------


@pytest.mark.both_apps
def test_upload_over_the_size_limit_is_413(api, unharmed):
    assert len(TOO_LARGE) > LIMIT
    assert_problem(upload(api, TOO_LARGE, "big.csv"), 413, str(LIMIT))
    unharmed()


def test_raw_csv_dataset_over_the_size_limit_is_413(api, unharmed):
    response = api.post("/kmeans/datasets", content=TOO_LARGE, headers={"Content-Type": CSV})
    assert_problem(response, 413, str(LIMIT))
    unharmed()


def test_multipart_dataset_over_the_size_limit_is_413(api, unharmed):
    response = api.post("/kmeans/datasets", files={"file": ("big.csv", TOO_LARGE, CSV)})
    assert_problem(response, 413, str(LIMIT))
    unharmed()


@pytest.mark.both_apps
def test_chunked_body_without_content_length_over_the_size_limit_is_413(api, unharmed):
    def chunks():
        for _ in range(12):
            yield b"1,2\n" * 25_000  # 100 kB each

    response = api.post("/kmeans/datasets", content=chunks(), headers={"Content-Type": CSV})
    assert_problem(response, 413, str(LIMIT))
    unharmed()


def test_predictions_over_the_size_limit_are_413(api, stored, unharmed):
    url = f"/kmeans/models/{stored.model_id}/predictions"
    assert_problem(api.post(url, content=TOO_LARGE, headers={"Content-Type": CSV}), 413, str(LIMIT))
    response = api.post("/kmeans/predict", files={"file": ("big.csv", TOO_LARGE, CSV)}, data={"job_id": "0"})
    assert_problem(response, 413, str(LIMIT))
    unharmed()


# -- content types -------------------------------------------------------------------------


@pytest.mark.both_apps
def test_text_plain_body_is_415(api, stored, unharmed):
    urls = [
        "/kmeans/datasets",
        "/kmeans/upload",
        "/kmeans/models",
        "/kmeans/fit",
        "/kmeans/predict",
        f"/kmeans/models/{stored.model_id}/predictions",
    ]
    for url in urls:
        response = api.post(url, content=b"1,2\n3,4\n", headers={"Content-Type": "text/plain"})
        assert_problem(response, 415, "text/plain")
    unharmed()


# -- file names ----------------------------------------------------------------------------


@pytest.mark.both_apps
def test_file_part_without_a_file_name_is_400(api, stored, unharmed):
    predictions = f"/kmeans/models/{stored.model_id}/predictions"
    for part in ((None, b"1,2\n3,4\n"), ("", b"1,2\n3,4\n")):
        responses = [
            api.post("/kmeans/upload", files={"file": part}),
            api.post("/kmeans/datasets", files={"file": part}),
            api.post("/kmeans/predict", files={"file": part}, data={"job_id": "0"}),
            api.post(predictions, files={"file": part}),
        ]
        for response in responses:
            problem = assert_problem(response, 400, "file")
            assert "empty" not in problem["detail"]  # the part was not empty
    unharmed()


def test_empty_file_part_with_empty_name_is_a_client_error(api, stored, unharmed):
    # What a browser form sends when no file was chosen.
    part = ("", b"", CSV)
    responses = [
        api.post("/kmeans/upload", files={"file": part}),
        api.post("/kmeans/datasets", files={"file": part}),
        api.post("/kmeans/predict", files={"file": part}, data={"job_id": "0"}),
        api.post(f"/kmeans/models/{stored.model_id}/predictions", files={"file": part}),
    ]
    for response in responses:
        assert response.status_code in (400, 422), response.text
        assert_problem(response, response.status_code)
    unharmed()


@pytest.mark.parametrize("filename", ["../../x", "..\\..\\evil.csv", "/etc/passwd"])
def test_file_name_with_path_parts_is_only_a_label(client, settings, tmp_path: Path, filename: str):
    job = upload(client, b"7,7\n8,8\n", filename)
    assert job.status_code == 200, job.text
    dataset = client.post("/kmeans/datasets", files={"file": (filename, b"5,5\n6,6\n", CSV)})
    assert dataset.status_code == 201, dataset.text

    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    assert job.json()["filename"] == base
    assert dataset.json()["name"] == base
    for shown in (job.json()["filename"], dataset.json()["name"]):
        assert "/" not in shown and "\\" not in shown

    # Nothing was written outside the data dir, and stored files are named by ids only.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    stored = sorted(p.name for p in (settings.data_dir / "datasets").iterdir())
    assert stored == sorted(f"{d}.npy" for d in (job.json()["dataset_id"], dataset.json()["id"]))
    assert not [p for p in settings.data_dir.rglob("*") if p.name in ("x", "evil.csv", "passwd")]
    for base_dir in (settings.data_dir, settings.data_dir / "datasets", settings.data_dir / "tmp", Path.cwd()):
        target = (base_dir / filename.replace("\\", "/").lstrip("/")).resolve()
        assert not target.exists() or target == Path("/etc/passwd").resolve()
    rows = client.get(f"/kmeans/datasets/{dataset.json()['id']}/rows").json()["items"]
    assert rows == [[5.0, 5.0], [6.0, 6.0]]


# -- JSON bodies ---------------------------------------------------------------------------


def test_json_dataset_with_ragged_rows_is_422(api, unharmed):
    response = api.post("/kmeans/datasets", json={"data": [[1, 2], [3, 4], [5]]})
    problem = assert_problem(response, 422, "row 3")
    assert problem["row"] == 3
    unharmed()


def test_json_dataset_with_wrong_number_of_columns_is_422(api, unharmed):
    response = api.post("/kmeans/datasets", json={"data": [[1, 2], [3, 4]], "columns": ["x", "y", "z"]})
    problem = assert_problem(response, 422, "columns", "3", "2")
    assert problem["parameter"] == "columns"
    unharmed()


def test_json_dataset_with_duplicate_column_names_is_422(api, unharmed):
    response = api.post("/kmeans/datasets", json={"data": [[1, 2]], "columns": ["x", "x"]})
    assert_problem(response, 422, "columns", "twice")
    unharmed()


def test_json_dataset_with_nan_is_422_naming_row_and_column(api, unharmed):
    body = b'{"data": [[1, 2], [3, NaN]]}'
    response = api.post("/kmeans/datasets", content=body, headers={"Content-Type": JSON})
    problem = assert_problem(response, 422, "row 2, column 2")
    assert (problem["row"], problem["column"]) == (2, 2)
    unharmed()


def test_json_dataset_with_unknown_field_is_400_naming_it(api, unharmed):
    response = api.post("/kmeans/datasets", json={"data": [[1, 2]], "colour": "blue"})
    assert_problem(response, 400, "colour")
    unharmed()


def test_json_dataset_with_a_list_for_a_cell_is_400(api, unharmed):
    response = api.post("/kmeans/datasets", json={"data": [[1, [2]]]})
    assert_problem(response, 400, "[2]")
    unharmed()


def test_json_dataset_with_integer_too_large_for_a_float_is_422(api, unharmed):
    body = b'{"data": [[1, 1' + b"0" * 400 + b"]]}"
    response = api.post("/kmeans/datasets", content=body, headers={"Content-Type": JSON})
    assert_problem(response, 422, "row 1, column 2")
    unharmed()


@pytest.mark.both_apps
def test_invalid_json_body_is_400(api, stored, unharmed):
    model_id = stored.model_id
    for url in ("/kmeans/fit", "/kmeans/models", "/kmeans/datasets", f"/kmeans/models/{model_id}/predictions"):
        response = api.post(url, content=b'{"job_id": 0,', headers={"Content-Type": JSON})
        assert_problem(response, 400)
    unharmed()


def test_json_body_that_is_not_an_object_is_400(api, stored, unharmed):
    model_id = stored.model_id
    for url in ("/kmeans/fit", "/kmeans/models", "/kmeans/datasets", f"/kmeans/models/{model_id}/predictions"):
        assert_problem(api.post(url, json=[[1, 2]]), 400, "object")
    unharmed()


def test_fit_without_job_id_is_400_naming_it(api, unharmed):
    response = api.post("/kmeans/fit", json={"model_params": {"n_clusters": 2}})
    assert_problem(response, 400, "job_id")
    unharmed()


# -- classic predict form ------------------------------------------------------------------


def test_classic_predict_without_job_id_is_400(api, unharmed):
    response = api.post("/kmeans/predict", files={"file": ("predict.csv", PREDICT_CSV, CSV)})
    assert_problem(response, 400, "job_id")
    unharmed()


def test_classic_predict_with_non_integer_job_id_is_400(api, unharmed):
    for job_id in ("abc", "-1"):
        response = api.post(
            "/kmeans/predict", files={"file": ("predict.csv", PREDICT_CSV, CSV)}, data={"job_id": job_id}
        )
        assert_problem(response, 400, "job_id")
    unharmed()


def test_classic_predict_without_file_is_400(api, unharmed):
    response = api.post("/kmeans/predict", data={"job_id": "0"}, files={"other": ("p.csv", PREDICT_CSV, CSV)})
    assert_problem(response, 400)
    unharmed()


def test_fit_with_job_id_beyond_64_bits_is_a_client_error(api, unharmed):
    response = api.post("/kmeans/fit", json={"job_id": 2**64, "model_params": {"n_clusters": 2}})
    assert 400 <= response.status_code < 500, response.text
    unharmed()


def test_classic_predict_with_job_id_beyond_64_bits_is_a_client_error(api, unharmed):
    response = api.post(
        "/kmeans/predict", files={"file": ("predict.csv", PREDICT_CSV, CSV)}, data={"job_id": str(2**64)}
    )
    assert 400 <= response.status_code < 500, response.text
    unharmed()


# -- paging and query parameters -----------------------------------------------------------


def test_paging_out_of_range_is_400(api, stored, unharmed):
    dataset_id = stored.dataset_id
    for url in ("/kmeans/datasets", "/kmeans/models", f"/kmeans/datasets/{dataset_id}/rows"):
        for query, fragment in (("offset=-1", "minimum of 0"), ("limit=0", "minimum of 1"), ("limit=5000", "1000")):
            assert_problem(api.get(f"{url}?{query}"), 400, fragment)
    unharmed()


def test_paging_errors_name_the_parameter(api, unharmed):
    assert_problem(api.get("/kmeans/datasets?offset=-1"), 400, "offset")
    assert_problem(api.get("/kmeans/datasets?limit=5000"), 400, "limit")
    unharmed()


def test_list_offset_beyond_64_bits_is_a_client_error(api, unharmed):
    for url in ("/kmeans/datasets", "/kmeans/models"):
        response = api.get(f"{url}?offset={2**64}")
        assert 400 <= response.status_code < 500, response.text
    unharmed()


@pytest.mark.both_apps
def test_unknown_query_parameter_is_400_naming_it(api, unharmed):
    assert_problem(api.get("/kmeans/datasets?colour=blue"), 400, "colour")
    unharmed()


def test_status_filter_outside_its_enum_is_400(api, unharmed):
    assert_problem(api.get("/kmeans/models?status=bogus"), 400, "bogus")
    unharmed()


def test_dataset_name_longer_than_255_is_400(api, unharmed):
    response = api.post(f"/kmeans/datasets?name={'n' * 256}", content=MODEL_CSV, headers={"Content-Type": CSV})
    assert_problem(response, 400)
    unharmed()
