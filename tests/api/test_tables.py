"""Real tables in, right answers out: mixed-type CSV and JSON, missing values, categories, ids,
and prediction columns matched by name (issue 12), through the HTTP API."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from api_helpers import CSV, app_client, assert_problem, create_csv_dataset, fit, wait_for_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import datasets as sk_datasets
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from starlette.testclient import TestClient

# A small mixed table: an id, a category with a gap, numbers with gaps, ';' and decimal commas.
MIXED = (
    b"id;segment;x;y\n"
    b"A1;gold;1,5;2\n"
    b"A2;silver;NA;2,5\n"
    b"A3;gold;10;11\n"
    b"A4;;11;10\n"
    b"A5;silver;1;1\n"
    b"A6;gold;10,5;NA\n"
)


@pytest.fixture(scope="module")
def api(tmp_path_factory, app_class: type) -> Iterator[TestClient]:
    with app_client(tmp_path_factory.mktemp("tables") / "data", app_class) as client:
        yield client


def post_csv(client: TestClient, path: str, content: bytes, accept: str = "application/json", **params: Any) -> Any:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.post(
        path + (f"?{query}" if query else ""), content=content, headers={"Content-Type": CSV, "accept": accept}
    )


def predictions(client: TestClient, model_id: str, content: bytes, **params: Any) -> dict[str, Any]:
    response = post_csv(client, f"/kmeans/models/{model_id}/predictions", content, **params)
    assert response.status_code == 200, response.text
    return response.json()


def schema_of(dataset: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(c["name"], c["type"], c["missing"]) for c in dataset["schema"]]


@pytest.fixture(scope="module")
def mixed(api) -> dict[str, Any]:
    response = post_csv(api, "/kmeans/datasets", MIXED, decimal=",")
    assert response.status_code == 201, response.text
    dataset = response.json()
    model = fit(api, dataset["id"], n_clusters=2, random_state=0, n_init=3)
    assert model["status"] == "succeeded", model
    return {"dataset": dataset, "model": model}


# -- ingest ----------------------------------------------------------------------------------


def test_a_mixed_csv_gets_a_type_per_column(mixed):
    dataset = mixed["dataset"]
    assert schema_of(dataset) == [
        ("id", "id", 0), ("segment", "categorical", 1), ("x", "numeric", 1), ("y", "numeric", 1)
    ]
    assert dataset["id_column"] == "id" and dataset["n_features"] == 3
    assert [c["distinct"] for c in dataset["schema"]] == [6, 2, 5, 5]


@pytest.mark.both_apps
def test_rows_come_back_as_written_with_null_for_missing(api, mixed):
    rows = api.get(f"/kmeans/datasets/{mixed['dataset']['id']}/rows").json()
    assert rows["columns"] == ["id", "segment", "x", "y"]
    assert rows["items"][:2] == [["A1", "gold", 1.5, 2.0], ["A2", "silver", None, 2.5]]
    assert rows["items"][3] == ["A4", None, 11.0, 10.0]


@pytest.mark.parametrize(
    ("content", "params"),
    [
        (b"id,kind,v\nr1,a,1.5\nr2,b,2\nr3,a,\n", {}),
        (b"id\tkind\tv\nr1\ta\t1.5\nr2\tb\t2\nr3\ta\tNA\n", {}),
        (b"id|kind|v\nr1|a|1.5\nr2|b|2\nr3|a|null\n", {}),
        (b"id;kind;v\nr1;a;1,5\nr2;b;2\nr3;a;N/A\n", {"decimal": ","}),
        (b"\xef\xbb\xbfid,kind,v\r\nr1,a,1.5\r\nr2,b,2\r\nr3,a,None\r\n", {}),
        (b'id,kind,v\nr1,"a",1.5\nr2,b,"2"\nr3,a,-\n', {"na_values": "-"}),
        (b"id;kind;v\nr1;a;1.5\nr2;b;2\nr3;a;\n", {"delimiter": "%3B"}),
    ],
)
def test_delimiters_decimal_commas_na_markers_and_quotes(api, content, params):
    response = post_csv(api, "/kmeans/datasets", content, **params)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert schema_of(dataset) == [("id", "id", 0), ("kind", "categorical", 0), ("v", "numeric", 1)]
    rows = api.get(f"/kmeans/datasets/{dataset['id']}/rows").json()["items"]
    assert rows == [["r1", "a", 1.5], ["r2", "b", 2.0], ["r3", "a", None]]


def test_quoted_fields_with_delimiters_and_line_breaks(api):
    content = b'name,city,v\n"Smith, J.","New\nYork",1\n"Doe, A.",Paris,2\n"Roe, B.",Paris,3\n'
    response = post_csv(api, "/kmeans/datasets", content, id_column="name")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert schema_of(dataset) == [("name", "id", 0), ("city", "categorical", 0), ("v", "numeric", 0)]
    rows = api.get(f"/kmeans/datasets/{dataset['id']}/rows").json()["items"]
    assert rows[0] == ["Smith, J.", "New\nYork", 1.0]


def test_id_column_can_be_named_even_when_numeric(api):
    content = b"customer,x,y\n101,1,2\n102,1,3\n103,9,9\n104,9,8\n"
    response = post_csv(api, "/kmeans/datasets", content, id_column="customer")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert schema_of(dataset)[0] == ("customer", "id", 0) and dataset["n_features"] == 2
    model = fit(api, dataset["id"], n_clusters=2, random_state=0)
    labels = api.get(f"/kmeans/models/{model['id']}/labels").json()
    assert labels["ids"] == ["101", "102", "103", "104"]
    assert labels["labels"][0] == labels["labels"][1] != labels["labels"][2] == labels["labels"][3]


def test_booleans_are_categories(api):
    response = api.post("/kmeans/datasets", json={"data": [[1.0, True], [2.0, False], [3.0, None], [4.0, True]]})
    assert response.status_code == 201, response.text
    assert schema_of(response.json()) == [("x1", "numeric", 0), ("x2", "categorical", 1)]


def test_json_rows_as_objects_keyed_by_column_name(api):
    data = [{"id": "a1", "x": 1, "kind": "u"}, {"x": None, "id": "b2", "kind": "v"}, {"id": "c3", "kind": None, "x": 3}]
    response = api.post("/kmeans/datasets", json={"data": data})
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["columns"] == ["id", "x", "kind"]
    assert schema_of(dataset) == [("id", "id", 0), ("x", "numeric", 1), ("kind", "categorical", 1)]
    rows = api.get(f"/kmeans/datasets/{dataset['id']}/rows").json()["items"]
    assert rows == [["a1", 1.0, "u"], ["b2", None, "v"], ["c3", 3.0, None]]


def test_the_columns_endpoint_gives_what_pandas_computes(api):
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(40)],
            "size": np.where(np.arange(40) % 7 == 0, np.nan, np.linspace(-3, 17, 40) ** 2),
            "kind": ["a", "b", "b", None, "c", "b", "a", "b"] * 5,
        }
    )
    dataset = create_csv_dataset(api, frame.to_csv(index=False).encode())
    columns = {c["name"]: c for c in api.get(f"/kmeans/datasets/{dataset['id']}/columns").json()["items"]}
    size = frame["size"]
    assert columns["size"]["missing"] == size.isna().sum() and columns["size"]["distinct"] == size.nunique()
    for ours, theirs in [("min", size.min()), ("max", size.max()), ("mean", size.mean()), ("median", size.median()),
                         ("stddev", size.std())]:
        assert columns["size"][ours] == pytest.approx(theirs, rel=1e-12), ours
    counts = frame["kind"].value_counts()
    assert columns["kind"]["missing"] == 5 and columns["kind"]["distinct"] == 3
    assert [(t["category"], t["count"]) for t in columns["kind"]["top_categories"]] == list(counts.items())
    assert columns["id"] == {"name": "id", "type": "id", "missing": 0, "distinct": 40}


# -- bad tables ------------------------------------------------------------------------------


def dataset_count(api) -> int:
    return api.get("/kmeans/datasets").json()["total"]


@pytest.mark.both_apps
@pytest.mark.parametrize(
    ("content", "params", "fragments"),
    [
        (b"x,empty,y\n1,,2\n3,,4\n", {}, ("'empty'", "no values")),
        (b"x,y\n1,2\n3,4\n", {"id_column": "nope"}, ("id_column", "'nope'")),
        (b"x;y\n1;2\n3;4\n", {"delimiter": "|"}, ("delimiter", "';'")),
        (b"x,y\n1,2\n3,oops\n5,6\n", {}, ("row 3, column 2", "oops")),
        (b"id\na1\nb2\n", {}, ("id column",)),
    ],
)
def test_bad_tables_are_422_naming_the_column_and_store_nothing(api, content, params, fragments):
    before = dataset_count(api)
    assert_problem(post_csv(api, "/kmeans/datasets", content, **params), 422, *fragments)
    assert dataset_count(api) == before


def test_too_many_categories_is_422_suggesting_id_column(api):
    rows = "".join(f"{i % 1500},k{i % 1200},{i % 3}\n" for i in range(2000))
    content = ("n,code,v\n" + rows).encode()
    before = dataset_count(api)
    problem = assert_problem(post_csv(api, "/kmeans/datasets", content), 422, "'code'", "id_column", "1000")
    assert problem.get("parameter") == "id_column"
    assert dataset_count(api) == before


@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        ({"features": ["x", "nope"]}, ("features", "'nope'")),
        ({"features": ["id", "x"]}, ("features", "'id'", "id column")),
        ({"missing": "error"}, ("missing", "'segment'")),
        ({"missing": "sometimes"}, ("missing",)),
    ],
)
def test_bad_fit_options_on_a_mixed_table_are_named(api, mixed, params, fragments):
    response = api.post("/kmeans/models", json={"dataset_id": mixed["dataset"]["id"], "params": params})
    status = 400 if params.get("missing") == "sometimes" else 422
    assert_problem(response, status, *fragments)


# -- fit -------------------------------------------------------------------------------------


def test_centers_are_in_original_units_with_category_shares(api, mixed):
    model = mixed["model"]
    centers = api.get(f"/kmeans/models/{model['id']}/centers").json()
    assert centers["columns"] == ["x", "y", "segment=gold", "segment=silver", "segment=(missing)"]
    labels = api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]
    x = np.array([1.5, 6.8, 10, 11, 1, 10.5])  # A2's missing x filled with the mean of the others
    y = np.array([2, 2.5, 11, 10, 1, 5.3])
    segment = np.array(["gold", "silver", "gold", None, "silver", "gold"], dtype=object)
    for label, center in enumerate(centers["centers"]):
        rows = np.asarray(labels) == label
        assert center[0] == pytest.approx(x[rows].mean()) and center[1] == pytest.approx(y[rows].mean())
        assert center[2:] == pytest.approx([np.mean(segment[rows] == s) for s in ("gold", "silver", None)])


@pytest.mark.parametrize("missing", ["mean", "median"])
def test_missing_values_are_filled_with_the_mean_or_median(api, mixed, missing):
    model = fit(api, mixed["dataset"]["id"], n_clusters=2, random_state=0, missing=missing)
    features = api.get(f"/kmeans/models/{model['id']}/export").json()["preprocessing"]["features"]
    fills = {f["name"]: f.get("fill") for f in features}
    x, y = [1.5, 10, 11, 1, 10.5], [2, 2.5, 11, 10, 1]
    reduce = np.mean if missing == "mean" else np.median
    assert fills == {"segment": None, "x": pytest.approx(reduce(x)), "y": pytest.approx(reduce(y))}


def test_drop_rows_labels_incomplete_rows_minus_one(api, mixed):
    model = fit(api, mixed["dataset"]["id"], n_clusters=2, random_state=0, missing="drop_rows")
    assert model["status"] == "succeeded", model
    labels = api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]
    assert [label == -1 for label in labels] == [False, True, False, True, False, True]
    assert sorted(model["cluster_sizes"]) == [1, 2]
    text = api.get(f"/kmeans/models/{model['id']}/labels", headers={"accept": CSV}).text
    assert text.splitlines()[:3] == ["id,label", f"A1,{labels[0]}", "A2,-1"]
    # A prediction of a row with a gap cannot be filled as in training: 422 naming it.
    response = post_csv(api, f"/kmeans/models/{model['id']}/predictions", b"x,y,segment\n1,,gold\n")
    assert_problem(response, 422, "row 2", "'y'", "drop_rows")


def test_features_choose_the_columns(api, mixed):
    model = fit(api, mixed["dataset"]["id"], n_clusters=2, random_state=0, features=["y", "x"])
    assert model["columns"] == ["y", "x"]
    assert api.get(f"/kmeans/models/{model['id']}/centers").json()["columns"] == ["y", "x"]
    a = predictions(api, model["id"], b"x,y\n1,2\n10,11\n")["labels"]
    assert a == predictions(api, model["id"], b"y,x,segment\n2,1,zz\n11,10,qq\n")["labels"]


# -- predict by name -------------------------------------------------------------------------


@pytest.mark.both_apps
def test_a_prediction_matches_columns_by_name_and_echoes_ids(api, mixed):
    model_id = mixed["model"]["id"]
    in_order = predictions(api, model_id, b"segment,x,y\ngold,1.5,2\ngold,10,11\n")
    assert in_order.get("ids") is None
    shuffled = predictions(api, model_id, b"y,id,extra,x,segment\n2,B1,zz,1.5,gold\n11,B2,q,10,gold\n")
    assert shuffled["labels"] == in_order["labels"] and shuffled["ids"] == ["B1", "B2"]
    assert in_order["labels"][0] != in_order["labels"][1]
    text = post_csv(api, f"/kmeans/models/{model_id}/predictions", b"y,id,x,segment\n2,B1,1.5,gold\n", accept=CSV)
    assert text.status_code == 200 and text.text.splitlines() == ["id,label", f"B1,{in_order['labels'][0]}"]


def test_without_a_header_columns_are_taken_by_position_and_counted(api, mixed):
    model_id = mixed["model"]["id"]
    by_name = predictions(api, model_id, b"segment,x,y\ngold,1.5,2\nsilver,10,11\n")["labels"]
    assert predictions(api, model_id, b"gold,1.5,2\nsilver,10,11\n")["labels"] == by_name
    assert_problem(post_csv(api, f"/kmeans/models/{model_id}/predictions", b"1.5,2\n10,11\n"), 422, "2 columns", "3")


def test_a_missing_feature_column_is_422_naming_it(api, mixed):
    response = post_csv(api, f"/kmeans/models/{mixed['model']['id']}/predictions", b"y,segment\n1,gold\n")
    problem = assert_problem(response, 422, "'x'")
    assert problem["parameter"] == "x"


def test_unknown_categories_predict_as_all_zero_and_are_counted(api, mixed):
    model_id = mixed["model"]["id"]
    answer = predictions(api, model_id, b"segment,x,y\nbronze,1.5,2\nplatinum,10,11\ngold,1,1\n")
    assert answer["unknown_categories"] == {"segment": 2}
    csv_answer = post_csv(api, f"/kmeans/models/{model_id}/predictions", b"segment,x,y\nbronze,1,2\n", accept=CSV)
    assert csv_answer.headers["x-unknown-categories"] == "segment=1"
    rows = api.post(f"/kmeans/models/{model_id}/predictions", json={"data": [{"x": 1, "y": 2, "segment": "zinc"}]})
    assert rows.json()["unknown_categories"] == {"segment": 1}


def test_missing_values_in_predictions_are_filled_as_in_training(api, mixed):
    model_id = mixed["model"]["id"]
    export = api.get(f"/kmeans/models/{model_id}/export").json()
    fill = {f["name"]: f.get("fill") for f in export["preprocessing"]["features"]}
    gap = predictions(api, model_id, b"segment,x,y\ngold,,2\n,10,NA\n")["labels"]
    filled = predictions(api, model_id, f"segment,x,y\ngold,{fill['x']!r},2\n,10,{fill['y']!r}\n".encode())["labels"]
    assert gap == filled
    one = {"data": [{"segment": "gold", "x": None, "y": 2}]}
    json_gap = api.post(f"/kmeans/models/{model_id}/predictions", json=one)
    assert json_gap.json()["labels"] == gap[:1]


def test_an_exported_mixed_model_imports_and_predicts_the_same(api, mixed):
    model_id = mixed["model"]["id"]
    document = api.get(f"/kmeans/models/{model_id}/export").json()
    imported = api.post("/kmeans/models/import", json=document)
    assert imported.status_code == 201, imported.text
    points = b"y,x,segment,id\n2,1.5,gold,P\n11,,bronze,Q\nNA,10,,R\n"
    assert predictions(api, imported.json()["id"], points) == {
        **predictions(api, model_id, points), "model_id": imported.json()["id"]
    }
    broken = {**document, "centers": [row[:-1] for row in document["centers"]]}
    assert_problem(api.post("/kmeans/models/import", json=broken), 422, "centers", "5")


def test_a_sweep_runs_on_a_mixed_table(api, mixed):
    response = api.post("/kmeans/sweeps", json={"dataset_id": mixed["dataset"]["id"], "k_min": 2, "k_max": 3})
    assert response.status_code == 202, response.text
    from conftest import wait_until_done

    sweep = wait_until_done(api, f"/kmeans/sweeps/{response.json()['id']}")
    assert sweep["status"] == "succeeded", sweep


# A fitted model on numeric columns a..d, for the property below.
NUMERIC_COLUMNS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def numeric_model(api) -> str:
    rng = np.random.default_rng(3)
    values = np.vstack([rng.normal(center, 1.0, (30, 4)) for center in (-6, 0, 6)]) * [1, 3, 0.5, 2]
    dataset = api.post("/kmeans/datasets", json={"data": values.tolist(), "columns": NUMERIC_COLUMNS}).json()
    model = fit(api, dataset["id"], n_clusters=3, random_state=0, standardize=True)
    assert model["status"] == "succeeded"
    return model["id"]


def as_csv(header: list[str], rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    points=st.lists(
        st.lists(st.floats(-20, 20, allow_nan=False), min_size=4, max_size=4), min_size=1, max_size=8
    ),
    order=st.permutations(NUMERIC_COLUMNS + ["note", "id"]),
)
def test_any_column_order_with_extra_columns_gives_the_same_labels(api, numeric_model, points, order):
    reference = predictions(api, numeric_model, as_csv(NUMERIC_COLUMNS, points))["labels"]
    rows = [
        [{**dict(zip(NUMERIC_COLUMNS, p, strict=True)), "note": "n", "id": f"q{i}"}[c] for c in order]
        for i, p in enumerate(points)
    ]
    shuffled = predictions(api, numeric_model, as_csv(list(order), rows))
    assert shuffled["labels"] == reference
    objects = [dict(zip(NUMERIC_COLUMNS, p, strict=True)) for p in points]
    by_object = api.post(f"/kmeans/models/{numeric_model}/predictions", json={"data": objects}).json()
    assert by_object["labels"] == reference


# -- real data -------------------------------------------------------------------------------


def real_frame(loader: Any, seed: int) -> tuple[pd.DataFrame, list[str], list[str]]:
    """A bundled scikit-learn table with an id column and a text category added, 3% of the
    numeric cells blanked; and its numeric and categorical column names."""
    frame = loader(as_frame=True).frame
    rng = np.random.default_rng(seed)
    target = frame.pop("target")
    numeric = [c.replace(" ", "_").replace("/", "_") for c in frame.columns]
    frame.columns = numeric
    frame = frame.mask(rng.random(frame.shape) < 0.03)
    frame.insert(0, "sample_id", [f"S{i:04d}" for i in range(len(frame))])
    frame["grade"] = np.array(["low", "mid", "high", "top"])[target.to_numpy() % 4]
    frame.loc[rng.random(len(frame)) < 0.05, "grade"] = None
    return frame, numeric, ["grade"]


def sklearn_labels(frame: pd.DataFrame, numeric: list[str], categorical: list[str], k: int) -> np.ndarray:
    """The in-process equivalent: impute means, z-score, one-hot (a missing value is a category
    of its own), k-means with the same k and seed."""
    transform = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), numeric),
            ("categorical", make_pipeline(SimpleImputer(strategy="constant", fill_value="(missing)"),
                                          OneHotEncoder()), categorical),
        ]
    )
    design = transform.fit_transform(frame)
    return KMeans(n_clusters=k, random_state=0, n_init=4).fit_predict(design)


@pytest.mark.parametrize(("loader", "k"), [(sk_datasets.load_iris, 3), (sk_datasets.load_wine, 3),
                                           (sk_datasets.load_breast_cancer, 2)])
def test_real_tables_cluster_as_a_scikit_learn_pipeline_does(api, loader, k):
    frame, numeric, categorical = real_frame(loader, seed=k)
    dataset = create_csv_dataset(api, frame.to_csv(index=False).encode())
    types = {c["name"]: c["type"] for c in dataset["schema"]}
    assert types["sample_id"] == "id" and types["grade"] == "categorical"
    assert all(types[c] == "numeric" for c in numeric)
    assert {c["name"]: c["missing"] for c in dataset["schema"]} == frame.isna().sum().to_dict()
    model = fit(api, dataset["id"], n_clusters=k, random_state=0, n_init=4, standardize=True)
    assert model["status"] == "succeeded", model
    labels = api.get(f"/kmeans/models/{model['id']}/labels").json()
    assert labels["ids"] == frame["sample_id"].tolist()
    # Standardizing one-hot columns or not moves the k-means++ seeds; the partition is the same.
    reference = sklearn_labels(frame, numeric, categorical, k)
    assert adjusted_rand_score(labels["labels"], reference) > 0.9
    # The training rows predicted back, columns reversed: their own labels.
    back = predictions(api, model["id"], frame[frame.columns[::-1]].to_csv(index=False).encode())
    assert back["labels"] == labels["labels"] and back["ids"] == labels["ids"]


# -- Parquet and Arrow -----------------------------------------------------------------------

PARQUET = "application/vnd.apache.parquet"
ARROW_FILE = "application/vnd.apache.arrow.file"
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def columnar(frame: pd.DataFrame, kind: str) -> bytes:
    """``frame`` as the bytes of a Parquet file, an Arrow IPC file, or an Arrow IPC stream."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    out = io.BytesIO()
    if kind == PARQUET:
        pq.write_table(table, out)
    elif kind == ARROW_FILE:
        with pa.ipc.new_file(out, table.schema) as writer:
            writer.write_table(table)
    else:
        with pa.ipc.new_stream(out, table.schema) as writer:
            writer.write_table(table)
    return out.getvalue()


def post_columnar(client: TestClient, path: str, body: bytes, kind: str, how: str) -> Any:
    """A columnar body sent raw with its media type, or as a multipart part (typed, or only named)."""
    if how == "raw":
        return client.post(path, content=body, headers={"Content-Type": kind})
    if how == "part type":
        return client.post(path, files={"file": ("table.bin", body, kind)})
    name = "table.parquet" if kind == PARQUET else "table.arrow"
    return client.post(path, files={"file": (name, body, "application/octet-stream")})


@pytest.mark.both_apps
@pytest.mark.parametrize("kind", [PARQUET, ARROW_FILE, ARROW_STREAM])
@pytest.mark.parametrize("how", ["raw", "part type", "part name"])
def test_parquet_and_arrow_tables_keep_their_types(api, kind, how):
    frame, numeric, _ = real_frame(sk_datasets.load_wine, seed=5)
    frame["count"] = pd.array(np.where(np.arange(len(frame)) % 9 == 0, None, np.arange(len(frame))), dtype="Int64")
    frame["flag"] = pd.array([True, False, None] * (len(frame) // 3) + [True] * (len(frame) % 3), dtype="boolean")
    response = post_columnar(api, "/kmeans/datasets", columnar(frame, kind), kind, how)
    assert response.status_code == 201, response.text
    dataset = response.json()
    expected = [("sample_id", "id", 0)] + [(c, "numeric", int(frame[c].isna().sum())) for c in numeric]
    expected += [("grade", "categorical", int(frame["grade"].isna().sum())), ("count", "numeric", 20),
                 ("flag", "categorical", 59)]
    assert schema_of(dataset) == expected
    # The same table as CSV is the same dataset, row for row.
    as_csv_dataset = create_csv_dataset(api, frame.to_csv(index=False).encode())
    ours = api.get(f"/kmeans/datasets/{dataset['id']}/rows?limit=1000").json()["items"]
    theirs = api.get(f"/kmeans/datasets/{as_csv_dataset['id']}/rows?limit=1000").json()["items"]
    assert ours == theirs


def test_a_parquet_prediction_matches_by_name(api, mixed):
    model_id = mixed["model"]["id"]
    points = pd.DataFrame({"y": [2.0, 11.0], "id": ["P1", "P2"], "segment": ["gold", "gold"], "x": [1.5, 10.0]})
    expected = predictions(api, model_id, points.to_csv(index=False).encode())
    for kind in (PARQUET, ARROW_STREAM):
        response = post_columnar(api, f"/kmeans/models/{model_id}/predictions", columnar(points, kind), kind, "raw")
        assert response.status_code == 200, response.text
        assert response.json() == expected and expected["ids"] == ["P1", "P2"]


@pytest.mark.parametrize(
    ("table", "fragments"),
    [
        (pa.table({"x": [1.0, 2.0], "tags": [[1], [2, 3]]}), ("'tags'", "nested")),
        (pa.table({"x": [1.0, 2.0], "point": [{"a": 1}, {"a": 2}]}), ("'point'", "nested")),
        (pa.table({"x": [1.0, float("inf")]}), ("row 2", "finite")),
        (pa.table({"x": [1.0, 2.0], "raw": pa.array([b"a", b"b"], pa.binary())}), ("'raw'",)),
        (pa.table({"x": pa.array([], pa.float64())}), ("no rows",)),
    ],
)
def test_bad_parquet_tables_are_422_naming_the_column(api, table, fragments):
    out = io.BytesIO()
    pq.write_table(table, out)
    before = dataset_count(api)
    assert_problem(post_columnar(api, "/kmeans/datasets", out.getvalue(), PARQUET, "raw"), 422, *fragments)
    assert dataset_count(api) == before


@pytest.mark.parametrize("kind", [PARQUET, ARROW_FILE])
def test_a_body_that_is_not_parquet_or_arrow_is_422_without_server_paths(api, kind, tmp_path):
    problem = assert_problem(post_columnar(api, "/kmeans/datasets", b"x,y\n1,2\n", kind, "raw"), 422, "readable")
    assert "/tmp" not in problem["detail"] and str(tmp_path.parent) not in problem["detail"]
    assert_problem(post_columnar(api, "/kmeans/datasets", b"", kind, "raw"), 422, "empty")


# -- data dirs from before column types ------------------------------------------------------


def test_a_data_dir_from_before_column_types_keeps_working(tmp_path):
    from kmeans.store import Store

    data_dir = tmp_path / "data"
    with app_client(data_dir) as client:
        dataset = create_csv_dataset(client, b"a,b,c\n1,2,3\n1,3,4\n9,9,9\n9,8,9\n")
        model = fit(client, dataset["id"], n_clusters=2, random_state=0, columns=["c", "a"], standardize=True)
        before = predictions(client, model["id"], b"3,1\n9,9\n")["labels"]
    # What an earlier version stored: no schema or stats, a numeric-only preprocessing record.
    store = Store(data_dir)
    with store.transaction() as db:
        db.execute("UPDATE datasets SET schema = NULL, stats = NULL, id_column = NULL")
        pre = store.get_model(model["id"])["preprocessing"]
        old = {k: pre[k] for k in ("feature_index", "feature_columns", "weight_index", "weight_column", "mean",
                                   "scale", "distance")}
        db.execute("UPDATE models SET preprocessing = ? WHERE id = ?", (json.dumps(old), model["id"]))
    with app_client(data_dir) as client:
        shown = client.get(f"/kmeans/datasets/{dataset['id']}").json()
        assert [(c["name"], c["type"]) for c in shown["schema"]] == [(n, "numeric") for n in "abc"]
        assert client.get(f"/kmeans/datasets/{dataset['id']}/columns").json()["items"][0]["max"] == 9
        assert predictions(client, model["id"], b"3,1\n9,9\n")["labels"] == before
        assert predictions(client, model["id"], b"a,c\n1,3\n9,9\n")["labels"] == before
        assert client.get(f"/kmeans/models/{model['id']}/centers").json()["columns"] == ["c", "a"]
        exported = client.get(f"/kmeans/models/{model['id']}/export").json()
        assert client.post("/kmeans/models/import", json=exported).status_code == 201
        assert fit(client, dataset["id"], n_clusters=2, random_state=0)["status"] == "succeeded"


def test_online_updates_and_scored_predictions_of_a_mixed_model_match_by_name(api, mixed):
    model = fit(api, mixed["dataset"]["id"], n_clusters=2, random_state=0, method="minibatch", standardize=True)
    assert model["status"] == "succeeded", model
    pushed = api.post(
        f"/kmeans/models/{model['id']}/data",
        json={"data": [{"y": 2, "x": 1.2, "segment": "gold"}, {"segment": None, "x": 10.5, "y": None}]},
    )
    assert pushed.status_code in (200, 201), pushed.text
    pushed_csv = post_csv(api, f"/kmeans/models/{model['id']}/data", b"segment,y,x,id\nsilver,1,1,Z9\n")
    assert pushed_csv.status_code in (200, 201), pushed_csv.text
    missing = post_csv(api, f"/kmeans/models/{model['id']}/data", b"segment,y\nsilver,1\n")
    assert_problem(missing, 422, "'x'")
    scored = predictions(api, model["id"], b"x,segment,y,id\n1.5,gold,2,P1\n10,gold,11,P2\n", distances="true")
    assert scored["ids"] == ["P1", "P2"] and len(scored["distances"]) == 2
    assert all(np.isfinite(scored["distances"]))
    as_csv_text = post_csv(api, f"/kmeans/models/{model['id']}/predictions", b"x,segment,y,id\n1.5,gold,2,P1\n",
                           accept=CSV, distances="true")
    assert as_csv_text.text.splitlines()[0].startswith("id,label,distance")


def test_a_text_value_longer_than_a_cell_may_be_is_422(api):
    content = ("x,kind\n1,a\n2," + "b" * 10_001 + "\n3,a\n").encode()
    before = dataset_count(api)
    assert_problem(post_csv(api, "/kmeans/datasets", content), 422, "'kind'", "10001 characters")
    assert dataset_count(api) == before


# -- what a review found: matching, typing and bounds ----------------------------------------


@pytest.fixture(scope="module")
def coded(api) -> dict[str, Any]:
    """A model whose categories look like numbers (plan 007, 1.0) and whose ids are numbers with leading zeros."""
    content = b"cid,x,plan\n001,1,007\n002,2,1.0\n003,10,basic\n004,11,pro\n005,1.5,team\n006,10.5,basic\n"
    response = post_csv(api, "/kmeans/datasets", content, id_column="cid")
    assert response.status_code == 201, response.text
    dataset = response.json()
    model = fit(api, dataset["id"], n_clusters=2, random_state=0)
    assert model["status"] == "succeeded", model
    return {"dataset": dataset, "model": model}


def test_ids_and_categories_keep_their_text(api, coded):
    labels = api.get(f"/kmeans/models/{coded['model']['id']}/labels").json()
    assert labels["ids"] == ["001", "002", "003", "004", "005", "006"]
    columns = {c["name"]: c for c in api.get(f"/kmeans/datasets/{coded['dataset']['id']}/columns").json()["items"]}
    assert {t["category"] for t in columns["plan"]["top_categories"]} == {"007", "1.0", "basic", "pro", "team"}
    model_id = coded["model"]["id"]
    for content in (b"x,plan,cid\n3,007,009\n6,1.0,010\n", b"x,plan\n3,007\n6,1.0\n7,basic\n"):
        answer = predictions(api, model_id, content)
        assert answer.get("unknown_categories", {}) == {}, answer
    assert predictions(api, model_id, b"x,plan,cid\n3,007,009\n")["ids"] == ["009"]
    as_json = api.post(f"/kmeans/models/{model_id}/predictions", json={"data": [{"x": 3, "plan": "007"}]}).json()
    assert as_json.get("unknown_categories", {}) == {}
    as_number = api.post(f"/kmeans/models/{model_id}/predictions", json={"data": [{"x": 3, "plan": 7}]}).json()
    assert as_number["unknown_categories"] == {"plan": 1}  # 7 is not the category "007"


def test_wrongly_named_json_objects_and_parquet_columns_are_422_not_matched_by_position(api):
    dataset = create_csv_dataset(api, b"id,x,y\nA1,1,100\nA2,2,99\nA3,100,1\nA4,101,2\n")
    model_id = fit(api, dataset["id"], n_clusters=2, random_state=0)["id"]
    objects = api.post(f"/kmeans/models/{model_id}/predictions", json={"data": [{"a": 1, "b": 100}]})
    assert_problem(objects, 422, "'x'")
    parquet = columnar(pd.DataFrame({"b": [100.0], "a": [1.0]}), PARQUET)
    assert_problem(post_columnar(api, f"/kmeans/models/{model_id}/predictions", parquet, PARQUET, "raw"), 422, "'x'")


def test_a_header_of_other_names_is_not_taken_for_a_row_of_categories(api):
    dataset = create_csv_dataset(api, b"seg,region\ngold,n\nsilver,s\ngold,s\nsilver,n\n")
    model_id = fit(api, dataset["id"], n_clusters=2, random_state=0)["id"]
    assert_problem(post_csv(api, f"/kmeans/models/{model_id}/predictions", b"segment,reg\ngold,n\n"), 422, "'seg'")
    # A first row of the model's own categories is data, with or without a header after it.
    assert len(predictions(api, model_id, b"gold,n\nsilver,s\n")["labels"]) == 2
    assert len(predictions(api, model_id, b"region,seg\nn,gold\n")["labels"]) == 1


@pytest.mark.parametrize("separator", [",", ";"])
def test_a_column_of_true_and_false_is_categorical_in_every_format(api, separator):
    content = f"x{separator}flag\n1{separator}true\n2{separator}False\n3{separator}TRUE\n".encode()
    dataset = create_csv_dataset(api, content)
    assert schema_of(dataset) == [("x", "numeric", 0), ("flag", "categorical", 0)]
    model_id = fit(api, dataset["id"], n_clusters=2, random_state=0)["id"]
    assert predictions(api, model_id, b"x,flag\n1,true\n11,false\n").get("unknown_categories", {}) == {}
    answer = api.post(f"/kmeans/models/{model_id}/predictions", json={"data": [{"x": 1, "flag": True}]}).json()
    assert answer.get("unknown_categories", {}) == {}


@pytest.mark.parametrize(
    "body",
    [
        {"data": [{"x": 1, "y": 10**400}]},
        {"data": [[1, "a"], [10**400, "b"]]},
        b'{"data": [{"x": 1e400}]}',
        b'{"data": [[1, "a"], [1e400, "b"]]}',
    ],
)
def test_json_numbers_past_float64_are_422_naming_the_cell(api, body):
    before = dataset_count(api)
    if isinstance(body, bytes):  # 1e400 as written: Python's json reads it as infinity
        response = api.post("/kmeans/datasets", content=body, headers={"Content-Type": "application/json"})
    else:
        response = api.post("/kmeans/datasets", json=body)
    assert_problem(response, 422, "does not fit in a 64-bit float")
    assert dataset_count(api) == before


def test_huge_parquet_integers_round_as_in_a_csv_and_huge_values_keep_json_finite(api):
    table = pa.table({"n": pa.array([2**53 + 1, 2**63 - 1, 5], pa.int64()), "x": [1.7e308, 1.7e308, 1.0]})
    out = io.BytesIO()
    pq.write_table(table, out)
    response = post_columnar(api, "/kmeans/datasets", out.getvalue(), PARQUET, "raw")
    assert response.status_code == 201, response.text
    columns = api.get(f"/kmeans/datasets/{response.json()['id']}/columns")
    assert columns.status_code == 200 and "Infinity" not in columns.text and "NaN" not in columns.text
    stats = {c["name"]: c for c in columns.json()["items"]}
    assert stats["x"]["median"] == 1.7e308 and stats["x"]["mean"] == pytest.approx(1.7e308 / 3 * 2)
    content = b"x,y\n1.7e308,1\n1.7e308,2\n1,3\n"
    dataset = create_csv_dataset(api, content)
    refused = api.post("/kmeans/models", json={"dataset_id": dataset["id"], "params": {"n_clusters": 1}})
    assert_problem(refused, 422, "column 'x'", "overflow", "standardize")
    params = {"n_clusters": 1, "standardize": True}
    model = api.post("/kmeans/models", json={"dataset_id": dataset["id"], "params": params}).json()
    shown = wait_for_model(api, model["id"])
    assert shown["status"] == "succeeded", shown
    for path in (f"/kmeans/models/{model['id']}", f"/kmeans/models/{model['id']}/centers", "/kmeans/models"):
        text = api.get(path).text
        assert "Infinity" not in text and "NaN" not in text, (path, text)


def test_a_small_parquet_file_of_very_many_rows_is_413(api):
    rows = 300_000  # x 5 columns x 8 bytes = 12 MB: more than 8 x the test server's 1 MB upload limit
    table = pa.table({"x": pa.array(np.zeros(rows)), "y": pa.array(np.ones(rows)), "z": pa.array(np.ones(rows)),
                      "w": pa.array(np.ones(rows)), "v": pa.array(np.ones(rows))})
    out = io.BytesIO()
    pq.write_table(table, out, compression="zstd")
    assert len(out.getvalue()) < 100_000
    before = dataset_count(api)
    assert_problem(post_columnar(api, "/kmeans/datasets", out.getvalue(), PARQUET, "raw"), 413, "rows")
    assert dataset_count(api) == before


def test_column_names_with_line_breaks_are_422(api):
    body = {"data": [{"s\r\nX-Evil: 1": "a", "x": 1}, {"s\r\nX-Evil: 1": "b", "x": 2}]}
    assert_problem(api.post("/kmeans/datasets", json=body), 422, "control character")
    assert_problem(post_csv(api, "/kmeans/datasets", b"a\x07b,c\n1,2\n"), 422, "control character")


def test_decimal_commas_without_the_decimal_option_are_422_suggesting_it(api):
    assert_problem(post_csv(api, "/kmeans/datasets", b"x;y\n1,5;2\n2,25;3\n"), 422, "decimal=,")
    assert_problem(post_csv(api, "/kmeans/datasets", b"x,y\n1,2\n", delimiter="%2C", decimal="%2C"), 422, "decimal")


def test_a_sweep_with_drop_rows_and_too_few_complete_rows_fails_with_the_reason(api):
    from conftest import wait_until_done

    dataset = create_csv_dataset(api, b"x,y\n1,1\n2,\n3,3\n,4\n5,5\n6,6\n")
    body = {"dataset_id": dataset["id"], "k_min": 2, "k_max": 6, "params": {"missing": "drop_rows"}}
    response = api.post("/kmeans/sweeps", json=body)
    assert response.status_code == 202, response.text
    sweep = wait_until_done(api, f"/kmeans/sweeps/{response.json()['id']}")
    assert sweep["status"] == "failed", sweep
    assert "k_max (6)" in sweep["error"]["detail"] and "4 rows" in sweep["error"]["detail"]


def test_the_classic_predict_takes_columns_by_position_as_it_always_did(api):
    job = api.post("/kmeans/upload", files={"file": ("c.csv", b"x,y\n1,100\n2,99\n100,1\n101,2\n", CSV)}).json()
    fitted = api.post("/kmeans/fit", json={"job_id": job["job_id"], "model_params": {"n_clusters": 2}})
    assert fitted.status_code == 200

    def classic(content: bytes) -> Any:
        return api.post("/kmeans/predict", files={"file": ("p.csv", content, CSV)}, data={"job_id": str(job["job_id"])},
                        headers={"accept": CSV})

    by_position = classic(b"1,100\n100,1\n").text
    assert classic(b"y,x\n1,100\n100,1\n").text == by_position  # the header is skipped, not matched
    assert classic(b"a,b\n1,100\n100,1\n").text == by_position
    assert_problem(classic(b"x,y,z\n1,100,5\n"), 422, "3 columns")
    assert_problem(api.post("/kmeans/upload", files={"file": ("s.csv", b"1;2\n3;4\n", CSV)}), 422, "delimiter")



@pytest.mark.parametrize("missing", ["mean", "median"])
def test_an_all_numeric_table_with_gaps_fits_with_filled_values(api, missing):
    """The fill must not write into the dataset's read-only memory map (it did: a failed fit)."""
    dataset = create_csv_dataset(api, b"x,y\n1,2\n,4\n5,6\n7,\n9,10\n")
    model = fit(api, dataset["id"], n_clusters=2, random_state=0, missing=missing)
    assert model["status"] == "succeeded", model.get("error")
    values = np.array([[1, 2], [np.nan, 4], [5, 6], [7, np.nan], [9, 10]])
    fill = np.nanmean(values, axis=0) if missing == "mean" else np.nanmedian(values, axis=0)
    filled = np.where(np.isnan(values), fill, values)
    expected = KMeans(n_clusters=2, random_state=0).fit(filled)
    assert adjusted_rand_score(expected.labels_, api.get(f"/kmeans/models/{model['id']}/labels").json()["labels"]) == 1
