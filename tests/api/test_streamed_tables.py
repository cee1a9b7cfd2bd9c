"""CSV and Parquet tables of many blocks, read batch by batch: every column gets the type (and every
bad cell the error) that reading the whole file gives, through the HTTP API."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from api_helpers import CSV, assert_problem, fit
from conftest import local_client
from sklearn.cluster import KMeans
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app

# Rows of the tables below: about 3 MB of CSV, three of pyarrow's 1 MiB blocks (the first of
# which decides the types a batch reader infers).
ROWS = 120_000
WORDS = ["gold", "silver", "bronze"]


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[TestClient]:
    # An upload limit above the tests' usual 1 MB: these tables are several blocks long.
    settings = Settings(data_dir=tmp_path_factory.mktemp("streamed") / "data", max_upload_bytes=20_000_000)
    with local_client(build_app(settings)) as client:
        yield client


def table(late: list[str] | None = None, start: int = ROWS // 2, early: list[str] | None = None) -> pd.DataFrame:
    """An id, a category and two number columns; column ``v`` is integers, ``late`` from row
    ``start`` on (cycled) and ``early`` before it when given."""
    rng = np.random.default_rng(7)
    v = [str(i % 97) for i in range(ROWS)]
    if early is not None:
        v[:start] = [early[i % len(early)] for i in range(start)]
    if late is not None:
        v[start:] = [late[i % len(late)] for i in range(ROWS - start)]
    return pd.DataFrame({
        "id": [f"r{i:07d}" for i in range(ROWS)],
        "kind": [WORDS[i % 3] if i % 11 else None for i in range(ROWS)],
        "x": np.where(rng.random(ROWS) < 0.05, np.nan, rng.normal(0, 10, ROWS).round(4)),
        "v": v,
    })


def body(frame: pd.DataFrame) -> bytes:
    content = frame.to_csv(index=False).encode()
    assert len(content) > 3 * 1024 * 1024 // 2, "the table must span several blocks"
    return content


def post(api: TestClient, content: bytes) -> Any:
    return api.post("/kmeans/datasets", content=content, headers={"Content-Type": CSV})


def columns_of(api: TestClient, dataset_id: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in api.get(f"/kmeans/datasets/{dataset_id}/columns").json()["items"]}


def assert_numeric_as_pandas(api: TestClient, dataset: dict[str, Any], content: bytes, name: str) -> None:
    """Column ``name`` of the dataset is numeric, with pandas' missing count, mean and extremes."""
    expected = pd.read_csv(io.BytesIO(content))[name].astype(float)
    got = columns_of(api, dataset["id"])[name]
    assert got["type"] == "numeric"
    assert got["missing"] == expected.isna().sum()
    assert got["mean"] == pytest.approx(expected.mean(), rel=1e-12)
    assert (got["min"], got["max"]) == (expected.min(), expected.max())


def test_a_table_of_many_blocks_gets_the_types_and_values_pandas_reads(api):
    content = body(table())
    response = post(api, content)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert [(c["name"], c["type"]) for c in dataset["schema"]] == [
        ("id", "id"), ("kind", "categorical"), ("x", "numeric"), ("v", "numeric")
    ]
    assert dataset["rows"] == ROWS
    for name in ("x", "v"):
        assert_numeric_as_pandas(api, dataset, content, name)
    kind = columns_of(api, dataset["id"])["kind"]
    assert kind["missing"] == sum(1 for i in range(ROWS) if i % 11 == 0)
    tail = api.get(f"/kmeans/datasets/{dataset['id']}/rows", params={"offset": ROWS - 2}).json()["items"]
    frame = pd.read_csv(io.BytesIO(content)).tail(2).astype(object)
    assert tail == frame.where(frame.notna(), None).to_numpy().tolist()
    assert tail[1][1] is None and tail[0][1] == WORDS[(ROWS - 2) % 3]


def test_integers_first_and_decimals_in_a_later_block_are_one_numeric_column(api):
    content = body(table(late=["2.5", "-0.125", "1e3"]))
    response = post(api, content)
    assert response.status_code == 201, response.text
    assert_numeric_as_pandas(api, response.json(), content, "v")


def test_a_column_empty_in_the_first_block_and_numbers_later_is_numeric(api):
    content = body(table(early=[""], start=ROWS // 2))
    response = post(api, content)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert_numeric_as_pandas(api, dataset, content, "v")
    assert columns_of(api, dataset["id"])["v"]["missing"] == ROWS // 2


def test_numbers_first_and_mostly_words_later_is_a_categorical_column(api):
    content = body(table(late=["low", "high"], start=ROWS // 4))
    response = post(api, content)
    assert response.status_code == 201, response.text
    v = columns_of(api, response.json()["id"])["v"]
    assert v["type"] == "categorical" and v["distinct"] == 97 + 2
    assert {t["category"] for t in v["top_categories"][:2]} == {"low", "high"}


def test_one_word_among_numbers_in_a_later_block_is_422_naming_its_row(api):
    frame = table()
    frame.loc[ROWS - 10, "v"] = "oops"
    before = api.get("/kmeans/datasets").json()["total"]
    # The header is row 1: data row i (0-based) is on line i + 2.
    assert_problem(post(api, body(frame)), 422, f"row {ROWS - 10 + 2}, column 4", "'oops'", "not a number")
    assert api.get("/kmeans/datasets").json()["total"] == before


def test_infinity_in_a_later_block_is_422_naming_its_row(api):
    frame = table()
    frame["x"] = frame["x"].astype(object)
    frame.loc[ROWS - 3, "x"] = "inf"
    assert_problem(post(api, body(frame)), 422, f"row {ROWS - 3 + 2}, column 3", "'inf'", "not a finite number")


def test_a_ragged_row_in_a_later_block_is_422_naming_its_row(api):
    lines = body(table()).split(b"\n")
    lines[ROWS - 5] += b",extra"
    assert_problem(post(api, b"\n".join(lines)), 422, f"row {ROWS - 5 + 1}")


# -- Parquet, read batch by batch as well ----------------------------------------------------

PARQUET = "application/vnd.apache.parquet"


def parquet(frame: pd.DataFrame, **options: Any) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out, index=False, **options)
    return out.getvalue()


def test_a_parquet_table_of_many_batches_is_the_same_dataset_as_its_csv(api):
    frame = table()
    frame["v"] = frame["v"].astype(int)
    frame["kind"] = frame["kind"].astype("category")  # a dictionary column
    response = api.post("/kmeans/datasets", content=parquet(frame), headers={"Content-Type": PARQUET})
    assert response.status_code == 201, response.text
    ours = response.json()
    theirs = post(api, frame.to_csv(index=False).encode()).json()
    assert ours["schema"] == theirs["schema"] and ours["rows"] == ROWS
    assert columns_of(api, ours["id"]) == columns_of(api, theirs["id"])
    for offset in (0, 70_000, ROWS - 3):
        page = f"rows?offset={offset}&limit=3"
        assert (api.get(f"/kmeans/datasets/{ours['id']}/{page}").json()["items"]
                == api.get(f"/kmeans/datasets/{theirs['id']}/{page}").json()["items"])


def test_infinity_in_a_later_parquet_batch_is_422_naming_its_row(api):
    frame = table()
    frame["v"] = frame["v"].astype(float)
    frame.loc[ROWS - 7, "v"] = -np.inf
    response = api.post("/kmeans/datasets", content=parquet(frame), headers={"Content-Type": PARQUET})
    assert_problem(response, 422, f"row {ROWS - 7 + 1}, column 4", "-inf is not a finite number")


def test_a_numeric_parquet_column_named_as_the_id_keeps_its_integers_as_text(api):
    frame = table()
    frame["id"] = np.arange(ROWS) * 3
    response = api.post(
        "/kmeans/datasets?id_column=id", content=parquet(frame, row_group_size=50_000),
        headers={"Content-Type": PARQUET},
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["schema"][0] == {"name": "id", "type": "id", "missing": 0, "distinct": ROWS}
    tail = api.get(f"/kmeans/datasets/{dataset['id']}/rows?offset={ROWS - 1}").json()["items"]
    assert tail[0][0] == str((ROWS - 1) * 3)


def test_a_mixed_fit_labels_as_scikit_learn_and_leaves_the_dataset_as_it_was(api):
    frame = table()
    frame["v"] = frame["v"].astype(float)
    content = frame.to_csv(index=False).encode()
    dataset = post(api, content).json()
    before = api.get(f"/kmeans/datasets/{dataset['id']}/rows?offset=5000&limit=20").json()["items"]
    model = fit(api, dataset["id"], n_clusters=4, random_state=0, n_init=1, standardize=True)
    assert model["status"] == "succeeded", model
    labels = api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]
    # The same design matrix by hand: numbers mean-filled and z-scored, each category one-hot
    # (a missing one its own column, after the categories).
    numbers = frame[["x", "v"]].fillna(frame[["x", "v"]].mean())
    numbers = (numbers - numbers.mean()) / numbers.std(ddof=0)
    hot = pd.get_dummies(frame["kind"].fillna("~missing"))[sorted(WORDS) + ["~missing"]].astype(float)
    design = np.column_stack([numbers.to_numpy(), hot.to_numpy()])
    expected = KMeans(n_clusters=4, random_state=0, n_init=1).fit(design).labels_
    assert np.array_equal(np.asarray(labels), expected)
    after = api.get(f"/kmeans/datasets/{dataset['id']}/rows?offset=5000&limit=20").json()["items"]
    assert after == before


def test_the_labels_csv_of_a_large_table_gives_each_id_as_written_with_its_label(api):
    import csv as csvlib

    frame = table()
    frame["id"] = [f'r{i},"{i % 5}"' if i % 1000 == 0 else f"r{i:07d}" for i in range(ROWS)]
    dataset = post(api, frame.to_csv(index=False).encode() + b"").json()
    assert dataset["id_column"] is None or dataset["id_column"] == "id"
    if dataset["id_column"] is None:  # ids with commas and quotes: named explicitly
        content = frame.to_csv(index=False).encode()
        dataset = api.post("/kmeans/datasets?id_column=id", content=content, headers={"Content-Type": CSV}).json()
    model = fit(api, dataset["id"], n_clusters=3, random_state=0, n_init=1)
    as_json = api.get(f"/kmeans/models/{model['id']}/labels").json()
    text = api.get(f"/kmeans/models/{model['id']}/labels", headers={"Accept": CSV}).text
    rows = list(csvlib.reader(io.StringIO(text)))
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == frame["id"].tolist() == as_json["ids"]
    assert [int(r[1]) for r in rows[1:]] == as_json["labels"]
