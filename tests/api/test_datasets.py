"""/datasets: CSV as people write it, JSON, the dataset resource, listing, rows and deletion."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from api_helpers import CSV, JSON, MODEL_CSV, MODEL_POINTS, app_client, assert_problem, csv_lines, fit, leftovers
from starlette.testclient import TestClient

DATASET_ID = re.compile(r"ds_[0-9a-f]{16}")


@pytest.fixture(scope="module")
def api(tmp_path_factory, app_class: type) -> Iterator[TestClient]:
    """One app for the tests that only add datasets and look at what they added."""
    with app_client(tmp_path_factory.mktemp("datasets") / "data", app_class) as client:
        yield client


def post_raw(client: TestClient, content: bytes, name: str | None = None) -> dict:
    url = "/kmeans/datasets" + (f"?name={name}" if name else "")
    response = client.post(url, content=content, headers={"Content-Type": CSV})
    assert response.status_code == 201, response.text
    return response.json()


def post_file(client: TestClient, content: bytes, filename: str = "points.csv") -> dict:
    response = client.post("/kmeans/datasets", files={"file": (filename, content, CSV)})
    assert response.status_code == 201, response.text
    return response.json()


def rows_of(client: TestClient, dataset_id: str) -> list[list[float]]:
    response = client.get(f"/kmeans/datasets/{dataset_id}/rows")
    assert response.status_code == 200, response.text
    return response.json()["items"]


def check_csv_variant(client: TestClient, content: bytes, rows: list[list[float]], columns: list[str]) -> None:
    """The CSV gives ``rows`` and ``columns`` both as a raw body and as a multipart file."""
    for dataset in (post_raw(client, content), post_file(client, content)):
        assert dataset["columns"] == columns
        assert (dataset["rows"], dataset["n_features"]) == (len(rows), len(columns))
        assert dataset["sha256"] == hashlib.sha256(content).hexdigest()
        assert rows_of(client, dataset["id"]) == rows


# -- CSV as people write it ----------------------------------------------------------------


def test_csv_header_row_names_the_columns(api):
    check_csv_variant(api, b"width,height\n1,2\n3,4\n", [[1, 2], [3, 4]], ["width", "height"])


def test_csv_without_header_gets_default_column_names(api):
    check_csv_variant(api, b"1,2,3\n4,5,6\n", [[1, 2, 3], [4, 5, 6]], ["x1", "x2", "x3"])


def test_csv_with_spaces_after_commas(api):
    check_csv_variant(api, b"x, y\n1, 2\n3,  4\n", [[1, 2], [3, 4]], ["x", "y"])


def test_csv_with_crlf_line_ends(api):
    check_csv_variant(api, b"x,y\r\n1,2\r\n3,4\r\n", [[1, 2], [3, 4]], ["x", "y"])


def test_csv_with_spaces_after_commas_before_quoted_values(api):
    check_csv_variant(api, b'"x", "y"\n"1", "2"\n3, "4"\n', [[1, 2], [3, 4]], ["x", "y"])


def test_csv_with_cr_only_line_ends(api):
    # What old Mac software (and Excel's "CSV (Macintosh)") writes.
    check_csv_variant(api, b"x,y\r1,2\r3,4\r", [[1, 2], [3, 4]], ["x", "y"])
    check_csv_variant(api, b"1,2\r3,4", [[1, 2], [3, 4]], ["x1", "x2"])


def test_csv_with_utf8_bom(api):
    check_csv_variant(api, b"\xef\xbb\xbfx,y\n1,2\n3,4\n", [[1, 2], [3, 4]], ["x", "y"])
    check_csv_variant(api, b"\xef\xbb\xbf1,2\n3,4\n", [[1, 2], [3, 4]], ["x1", "x2"])


def test_csv_with_bom_crlf_and_spaces_together(api):
    check_csv_variant(api, b"\xef\xbb\xbfx, y\r\n1, 2\r\n3, 4", [[1, 2], [3, 4]], ["x", "y"])


def test_csv_with_trailing_newline_or_none(api):
    with_newline = post_raw(api, b"1,2\n3,4\n")
    without = post_raw(api, b"1,2\n3,4")
    assert rows_of(api, with_newline["id"]) == rows_of(api, without["id"]) == [[1, 2], [3, 4]]
    assert with_newline["sha256"] != without["sha256"]  # the hash is of the bytes as sent


def test_csv_with_a_single_row(api):
    check_csv_variant(api, b"7,8,9\n", [[7, 8, 9]], ["x1", "x2", "x3"])
    check_csv_variant(api, b"a,b\n7,8", [[7, 8]], ["a", "b"])


def test_csv_with_a_single_column(api):
    check_csv_variant(api, b"1\n2\n3\n", [[1], [2], [3]], ["x1"])
    check_csv_variant(api, b"size\n1\n2\n", [[1], [2]], ["size"])


def test_csv_with_blank_lines_between_rows(api):
    check_csv_variant(api, b"\nx,y\n\n1,2\n\n3,4\n\n", [[1, 2], [3, 4]], ["x", "y"])


def test_csv_with_quoted_values_and_names(api):
    check_csv_variant(api, b'"x","y"\n"1","2"\n', [[1, 2]], ["x", "y"])


def test_csv_numbers_keep_full_precision(api):
    values = [0.1, 1e-300, 123456789.12345679, -2.5e10, 1 / 3]
    content = ",".join(repr(v) for v in values).encode() + b"\n"
    dataset = post_raw(api, content)
    assert rows_of(api, dataset["id"]) == [values]
    text = api.get(f"/kmeans/datasets/{dataset['id']}/rows", headers={"accept": CSV}).text
    assert [float(v) for v in text.splitlines()[1].split(",")] == values


def test_csv_with_scientific_and_signed_numbers(api):
    check_csv_variant(api, b"+1,-2.5\n1e3,.5\n", [[1, -2.5], [1000, 0.5]], ["x1", "x2"])


# -- the three ways to create --------------------------------------------------------------


@pytest.mark.both_apps
def test_create_from_multipart_file(api):
    response = api.post("/kmeans/datasets", files={"file": ("model.csv", MODEL_CSV, CSV)})
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith(JSON)
    dataset = response.json()
    assert dataset["name"] == "model.csv"
    assert dataset["sha256"] == hashlib.sha256(MODEL_CSV).hexdigest()
    assert api.get(response.headers["location"]).json() == dataset
    assert rows_of(api, dataset["id"]) == MODEL_POINTS


def test_create_from_multipart_file_with_name_query(api):
    response = api.post("/kmeans/datasets?name=training", files={"file": ("model.csv", MODEL_CSV, CSV)})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "training"


@pytest.mark.both_apps
def test_create_from_raw_csv_with_name(api):
    response = api.post("/kmeans/datasets?name=points", content=MODEL_CSV, headers={"Content-Type": CSV})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["name"] == "points"
    assert dataset["sha256"] == hashlib.sha256(MODEL_CSV).hexdigest()
    assert response.headers["location"] == f"/kmeans/datasets/{dataset['id']}"
    assert api.get(response.headers["location"]).json() == dataset
    assert rows_of(api, dataset["id"]) == MODEL_POINTS


def test_create_from_raw_csv_without_name_gets_one(api):
    dataset = post_raw(api, MODEL_CSV)
    assert isinstance(dataset["name"], str) and dataset["name"].strip()
    assert "/" not in dataset["name"]


def test_create_from_raw_csv_with_charset_parameter(api):
    response = api.post("/kmeans/datasets", content=b"1,2\n3,4\n", headers={"Content-Type": "text/csv; charset=utf-8"})
    assert response.status_code == 201, response.text
    assert rows_of(api, response.json()["id"]) == [[1, 2], [3, 4]]


@pytest.mark.both_apps
def test_create_from_json(api):
    body = {"name": "points", "columns": ["x", "y"], "data": MODEL_POINTS}
    response = api.post("/kmeans/datasets", json=body)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["name"], dataset["columns"], dataset["rows"], dataset["n_features"]) == ("points", ["x", "y"], 6, 2)
    assert re.fullmatch(r"[0-9a-f]{64}", dataset["sha256"])
    assert api.get(response.headers["location"]).json() == dataset
    assert rows_of(api, dataset["id"]) == MODEL_POINTS


def test_create_from_json_without_columns_gets_default_names(api):
    response = api.post("/kmeans/datasets", json={"data": [[1, 2, 3]]})
    assert response.status_code == 201, response.text
    assert response.json()["columns"] == ["x1", "x2", "x3"]


def test_create_from_json_with_name_query_overrides_body_name(api):
    response = api.post("/kmeans/datasets?name=query", json={"name": "body", "data": [[1, 2]]})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "query"


def test_dataset_fields(api):
    before = datetime.now(UTC)
    dataset = post_raw(api, b"x,y\n1,2\n3,4\n5,6\n", name="three")
    assert set(dataset) >= {"id", "name", "rows", "n_features", "columns", "sha256", "created_at"}
    assert DATASET_ID.fullmatch(dataset["id"])
    assert (dataset["name"], dataset["rows"], dataset["n_features"], dataset["columns"]) == ("three", 3, 2, ["x", "y"])
    created = datetime.fromisoformat(dataset["created_at"])
    assert created.tzinfo is not None
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC) + timedelta(seconds=1)
    assert api.get(f"/kmeans/datasets/{dataset['id']}").json() == dataset


def test_same_content_twice_is_two_datasets(api):
    first, second = post_raw(api, b"1,2\n"), post_raw(api, b"1,2\n")
    assert first["id"] != second["id"]
    assert first["sha256"] == second["sha256"]


# -- listing -------------------------------------------------------------------------------


def test_list_is_newest_first_with_paging(client):
    ids = [post_raw(client, f"{i},{i}\n".encode(), name=f"d{i}")["id"] for i in range(5)]
    newest_first = ids[::-1]

    everything = client.get("/kmeans/datasets").json()
    assert (everything["total"], everything["offset"], everything["limit"]) == (5, 0, 100)
    assert [d["id"] for d in everything["items"]] == newest_first

    page = client.get("/kmeans/datasets?offset=1&limit=2").json()
    assert (page["total"], page["offset"], page["limit"]) == (5, 1, 2)
    assert [d["id"] for d in page["items"]] == newest_first[1:3]
    assert page["items"][0] == client.get(f"/kmeans/datasets/{newest_first[1]}").json()

    last = client.get("/kmeans/datasets?offset=4&limit=2").json()
    assert [d["id"] for d in last["items"]] == newest_first[4:]


def test_list_offset_past_the_end_is_empty(client):
    post_raw(client, b"1,2\n")
    page = client.get("/kmeans/datasets?offset=10").json()
    assert (page["items"], page["total"]) == ([], 1)


def test_list_of_a_new_service_is_empty(client):
    assert client.get("/kmeans/datasets").json() == {"items": [], "offset": 0, "limit": 100, "total": 0}


# -- rows ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ten_rows(api) -> dict:
    content = b"a,b\n" + b"".join(f"{i},{i * 10}\n".encode() for i in range(10))
    return post_raw(api, content)


def test_rows_json_with_offset_and_limit(api, ten_rows):
    page = api.get(f"/kmeans/datasets/{ten_rows['id']}/rows?offset=3&limit=4").json()
    assert page == {
        "items": [[3, 30], [4, 40], [5, 50], [6, 60]],
        "columns": ["a", "b"],
        "offset": 3,
        "limit": 4,
        "total": 10,
    }


def test_rows_json_default_page_is_everything_up_to_100(api, ten_rows):
    page = api.get(f"/kmeans/datasets/{ten_rows['id']}/rows").json()
    assert (page["offset"], page["limit"], page["total"]) == (0, 100, 10)
    assert page["items"] == [[i, i * 10] for i in range(10)]


@pytest.mark.both_apps
def test_rows_csv_has_header_then_rows(api, ten_rows):
    response = api.get(f"/kmeans/datasets/{ten_rows['id']}/rows?offset=8&limit=5", headers={"accept": CSV})
    lines = csv_lines(response)
    assert lines[0] == "a,b"
    assert [[float(v) for v in line.split(",")] for line in lines[1:]] == [[8, 80], [9, 90]]


def test_rows_past_the_end_are_empty(api, ten_rows):
    page = api.get(f"/kmeans/datasets/{ten_rows['id']}/rows?offset=10").json()
    assert (page["items"], page["total"]) == ([], 10)
    assert csv_lines(api.get(f"/kmeans/datasets/{ten_rows['id']}/rows?offset=10", headers={"accept": CSV})) == ["a,b"]


def test_rows_limit_caps_a_long_dataset(api):
    dataset = post_raw(api, b"".join(f"{i}\n".encode() for i in range(1500)))
    page = api.get(f"/kmeans/datasets/{dataset['id']}/rows?offset=1000&limit=1000").json()
    assert page["total"] == 1500
    assert page["items"] == [[float(i)] for i in range(1000, 1500)]


# -- deletion ------------------------------------------------------------------------------


@pytest.mark.both_apps
def test_delete_then_404(client, settings):
    dataset = post_raw(client, b"1,2\n3,4\n")
    other = post_raw(client, b"5,6\n")
    response = client.delete(f"/kmeans/datasets/{dataset['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(client.get(f"/kmeans/datasets/{dataset['id']}"), 404, dataset["id"])
    assert_problem(client.get(f"/kmeans/datasets/{dataset['id']}/rows"), 404, dataset["id"])
    assert_problem(client.delete(f"/kmeans/datasets/{dataset['id']}"), 404, dataset["id"])
    listing = client.get("/kmeans/datasets").json()
    assert [d["id"] for d in listing["items"]] == [other["id"]]
    assert not (settings.data_dir / "datasets" / f"{dataset['id']}.npy").exists()
    assert leftovers(settings.data_dir) == []


@pytest.mark.both_apps
def test_delete_answers_204_without_a_problem_content_type(api):
    dataset = post_raw(api, b"1,2\n")
    response = api.delete(f"/kmeans/datasets/{dataset['id']}")
    assert response.status_code == 204
    assert "problem" not in response.headers.get("content-type", "")


def test_deleting_a_dataset_keeps_models_fitted_on_it_working(api):
    dataset = post_raw(api, MODEL_CSV)
    model = fit(api, dataset["id"], n_clusters=2, random_state=0)
    assert model["status"] == "succeeded"
    labels = api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]
    centers = api.get(f"/kmeans/models/{model['id']}/centers").json()

    assert api.delete(f"/kmeans/datasets/{dataset['id']}").status_code == 204

    assert api.get(f"/kmeans/models/{model['id']}").json()["status"] == "succeeded"
    assert api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"] == labels
    assert api.get(f"/kmeans/models/{model['id']}/centers").json() == centers
    predicted = api.post(f"/kmeans/models/{model['id']}/predictions", json={"data": [[1, 3], [10, 1]]})
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["labels"] == [labels[0], labels[3]]
