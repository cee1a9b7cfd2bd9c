"""Every number the service stores or sends is finite (issue 14, item 2), as classes:

- a non-finite number (NaN, Infinity, a literal past float64's range such as 1e999) is refused
  wherever the spec takes a number: any field of any JSON request body, any number parameter;
- data whose squared distances would overflow float64 is refused naming its column (fits) or
  its row and column (predictions, online pushes), and what is accepted answers strict JSON
  with finite figures, whatever the magnitude of the values (property-based);
- the store never writes a non-finite value, whoever asks it to (tests/unit/test_store.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import yaml
from api_helpers import CSV, JSON, assert_problem, fit, wait_for_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from kmeans.api.specdoc import base_path
from kmeans.api.validation import FastRequestValidator
from kmeans.config import Settings
from server import build_app
from tests.conftest import ROOT, local_client

SPEC = yaml.safe_load((ROOT / "api.yaml").read_text())
BASE = base_path(SPEC)
METHODS = ("get", "put", "post", "delete", "patch")
NON_FINITE = [float("nan"), float("inf"), float("-inf")]
PROPERTY = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def strict_json(text: str) -> Any:
    """Parse JSON as a strict client does: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in a JSON answer: {text[:300]}")

    return json.loads(text, parse_constant=refuse)


def resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = SPEC
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        node = target
    return node


def deref(node: Any, seen: frozenset = frozenset()) -> Any:
    """``node`` with every ``$ref`` replaced by its target (as connexion validates: dereferenced)."""
    if isinstance(node, dict):
        if "$ref" in node:
            assert node["$ref"] not in seen, f"a cycle through {node['$ref']}"
            return deref(resolve(node), seen | {node["$ref"]})
        return {k: deref(v, seen) for k, v in node.items()}
    if isinstance(node, list):
        return [deref(v, seen) for v in node]
    return node


def number_paths(schema: Any, path: tuple = (), seen: frozenset = frozenset()) -> Iterator[tuple]:
    """Every place in ``schema`` where a number goes: a tuple of property names and ``[]`` for items."""
    if isinstance(schema, dict) and "$ref" in schema:
        if schema["$ref"] in seen:
            return
        seen = seen | {schema["$ref"]}
    schema = resolve(schema)
    if not isinstance(schema, dict) or schema.get("x-kmeans-row"):
        # Rows of data cells are read by the one rows reader, which names the row and column of
        # a non-finite cell (422; tests/api/test_bad_input.py), as for a CSV file.
        return
    if schema.get("type") == "number":
        yield path
    for key in ("oneOf", "anyOf", "allOf"):
        for branch in schema.get(key, []):
            yield from number_paths(branch, path, seen)
    for name, sub in schema.get("properties", {}).items():
        yield from number_paths(sub, (*path, name), seen)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from number_paths(schema["additionalProperties"], (*path, "key"), seen)
    if isinstance(schema.get("items"), dict):
        yield from number_paths(schema["items"], (*path, "[]"), seen)


def placed(path: tuple, value: float) -> Any:
    """A document with ``value`` at ``path`` and nothing else."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    return [placed(rest, value)] if head == "[]" else {head: placed(rest, value)}


def json_body_numbers() -> list[tuple[str, str, tuple]]:
    found = []
    for spec_path, item in SPEC["paths"].items():
        for method in (m for m in item if m in METHODS):
            body = resolve(item[method].get("requestBody", {}))
            schema = body.get("content", {}).get(JSON, {}).get("schema")
            if schema is not None:
                found += [(method.upper(), spec_path, p) for p in sorted(set(number_paths(schema)))]
    return found


JSON_BODY_NUMBERS = json_body_numbers()


def messages(errors: Any) -> Iterator[str]:
    for error in errors:
        yield error.message
        yield from messages(error.context or [])


def test_the_spec_has_number_fields_in_json_bodies_at_several_depths():
    assert len(JSON_BODY_NUMBERS) > 10
    assert {len(p) for _, _, p in JSON_BODY_NUMBERS} >= {1, 2, 3}


@pytest.mark.parametrize(("method", "spec_path", "path"), JSON_BODY_NUMBERS)
@pytest.mark.parametrize("value", NON_FINITE)
def test_every_number_field_of_every_json_body_refuses_a_non_finite_number(method, spec_path, path, value):
    operation = SPEC["paths"][spec_path][method.lower()]
    validator = FastRequestValidator(deref(resolve(operation["requestBody"])["content"][JSON]["schema"]))
    found = list(messages(validator.iter_errors(placed(path, value))))
    assert any("is not a finite number" in m for m in found), (path, found)
    finite = [m for m in messages(validator.iter_errors(placed(path, 1.5))) if "finite" in m]
    assert finite == []


def number_parameters() -> list[tuple[str, str, str]]:
    found = []
    for spec_path, item in SPEC["paths"].items():
        for method in (m for m in item if m in METHODS):
            for parameter in map(resolve, [*item.get("parameters", []), *item[method].get("parameters", [])]):
                if resolve(parameter.get("schema", {})).get("type") == "number" and parameter["in"] == "query":
                    found.append((method.upper(), spec_path, parameter["name"]))
    return sorted(set(found))


NUMBER_PARAMETERS = number_parameters()


@pytest.fixture(scope="module")
def api(tmp_path_factory, app_class: type) -> Iterator[TestClient]:
    settings_ = Settings(data_dir=tmp_path_factory.mktemp("finite") / "data", max_concurrent_fits=2)
    with local_client(build_app(settings_, app_class)) as client:
        yield client


@pytest.fixture(scope="module")
def fitted(api: TestClient) -> dict:
    """A model of four points around (0, 0) and (10, 10), unscaled."""
    ds = api.post(f"{BASE}/datasets", json={"data": [[0, 0], [0, 2], [10, 10], [10, 12]], "columns": ["x", "y"]})
    return fit(api, ds.json()["id"], n_clusters=2, random_state=0)


def test_the_spec_has_number_parameters():
    assert NUMBER_PARAMETERS


@pytest.mark.parametrize(("method", "spec_path", "name"), NUMBER_PARAMETERS)
@pytest.mark.parametrize("text", ["NaN", "nan", "Infinity", "-inf", "1e999", "-1E400"])
def test_a_non_finite_number_parameter_is_400_naming_it(api, fitted, method, spec_path, name, text):
    url = BASE + re.sub(r"\{[^}]+\}", fitted["id"], spec_path) + f"?{name}={text}"
    response = api.request(method, url, json={"data": [[1, 2]]})
    assert_problem(response, 400, f"query parameter '{name}'", "not a finite number")


@pytest.mark.both_apps
def test_a_non_finite_number_in_a_json_body_is_400_through_http(api, fitted):
    for body in (b'{"data": [[1, 2]], "threshold": NaN}', b'{"params": {"tol": 1e999}}'):
        path = f"{BASE}/models/{fitted['id']}/" + ("predictions" if b"data" in body else "copy")
        response = api.post(path, content=body, headers={"Content-Type": JSON})
        assert response.status_code == 400, response.text


# -- data whose squares overflow ----------------------------------------------------------------

magnitudes = st.integers(0, 308)


def csv_of(rows: list[list[float]]) -> bytes:
    return ("a,b,c\n" + "".join(",".join(repr(v) for v in row) + "\n" for row in rows)).encode()


@PROPERTY
@given(
    exponent=magnitudes,
    column=st.integers(0, 2),
    signs=st.lists(st.sampled_from([1.0, -1.0]), min_size=6, max_size=6),
    standardize=st.booleans(),
    cosine=st.booleans(),
)
def test_a_fit_of_values_of_any_magnitude_is_refused_naming_the_column_or_finite(
    api, exponent, column, signs, standardize, cosine
):
    rng = np.random.default_rng(exponent)
    rows = (rng.uniform(1, 9, (6, 3)) * [1, 2, 3]).tolist()
    for i, sign in enumerate(signs):
        rows[i][column] = sign * float(rng.uniform(1, 1.7)) * 10.0**exponent
    ds = api.post(f"{BASE}/datasets", content=csv_of(rows), headers={"Content-Type": CSV})
    assert ds.status_code == 201, ds.text
    params = {"n_clusters": 2, "random_state": 0, "standardize": standardize}
    if cosine:
        params["distance"] = "cosine"
    name = "abc"[column]
    response = api.post(f"{BASE}/models", json={"dataset_id": ds.json()["id"], "params": params})
    if response.status_code == 422:
        assert_problem(response, 422, f"column '{name}'", "overflow")
        assert exponent > 140 and not standardize and not cosine  # only what would overflow
        return
    assert response.status_code == 202, response.text
    model = wait_for_model(api, response.json()["id"])
    if model["status"] == "failed":  # values near float64's largest, even standardized
        assert f"column '{name}'" in model["error"]["detail"] and exponent >= 300, model
    else:
        assert model["status"] == "succeeded", model
    for path in ("", "/centers", "/labels"):
        shown = api.get(f"{BASE}/models/{model['id']}{path}")
        if shown.status_code == 200:
            strict_json(shown.text)
    strict_json(api.get(f"{BASE}/models").text)
    if model["status"] == "succeeded":
        scored = api.post(f"{BASE}/models/{model['id']}/predictions?distances=true", json={"data": rows[:3]})
        assert scored.status_code in (200, 422), scored.text
        if scored.status_code == 200:
            assert all(math.isfinite(d) for d in strict_json(scored.text)["distances"])


@PROPERTY
@given(exponent=magnitudes, row=st.integers(0, 2), column=st.integers(0, 1), sign=st.sampled_from([1.0, -1.0]))
def test_a_prediction_of_a_value_of_any_magnitude_is_right_or_refused_naming_row_and_column(
    api, fitted, exponent, row, column, sign
):
    points = [[1.0, 1.0], [9.0, 11.0], [4.0, 6.0]]
    points[row][column] = sign * 1.5 * 10.0**exponent
    for as_csv in (False, True):
        if as_csv:
            content = ("x,y\n" + "".join(f"{a!r},{b!r}\n" for a, b in points)).encode()
            response = api.post(f"{BASE}/models/{fitted['id']}/predictions?distances=true", content=content,
                                headers={"Content-Type": CSV})
        else:
            response = api.post(f"{BASE}/models/{fitted['id']}/predictions?distances=true", json={"data": points})
        if response.status_code == 422:
            assert exponent > 140, response.text
            shown_row = row + 2 if as_csv else row + 1  # a CSV's rows count its header line
            problem = assert_problem(response, 422, f"row {shown_row}, column '{'xy'[column]}'", "overflow")
            assert problem["row"] == shown_row
            continue
        assert response.status_code == 200, response.text
        answer = strict_json(response.text)
        centers = np.array(strict_json(api.get(f"{BASE}/models/{fitted['id']}/centers").text)["centers"])
        scale = 10.0 ** max(exponent - 100, 0)  # the same order of distances, without overflow
        expected = ((np.array(points)[:, None, :] / scale - centers[None] / scale) ** 2).sum(axis=2).argmin(axis=1)
        assert answer["labels"] == expected.tolist()
        assert all(math.isfinite(d) for d in answer["distances"])


def test_an_online_push_that_would_overflow_is_422_and_stores_no_version(api):
    ds = api.post(f"{BASE}/datasets", json={"data": [[0, 0], [0, 2], [10, 0], [10, 2]]}).json()["id"]
    model = fit(api, ds, method="minibatch", init=[[0, 1], [10, 1]], n_init=1, random_state=0)
    before = api.get(f"{BASE}/models/{model['id']}/versions").json()
    response = api.post(f"{BASE}/models/{model['id']}/data", json={"data": [[1, 1], [1e300, 2]]})
    assert_problem(response, 422, "row 2", "overflow")
    assert api.get(f"{BASE}/models/{model['id']}/versions").json() == before
    pushed = api.post(f"{BASE}/models/{model['id']}/data", json={"data": [[1e100, 2]]})
    assert pushed.status_code == 200, pushed.text
    assert all(math.isfinite(v) for row in strict_json(pushed.text)["centers"] for v in row)


def test_weights_whose_sum_overflows_are_422_naming_the_weight_column(api):
    ds = api.post(f"{BASE}/datasets", json={"data": [[1, 1e308], [2, 1e308], [3, 1]], "columns": ["x", "w"]})
    response = api.post(f"{BASE}/models", json={"dataset_id": ds.json()["id"],
                                                "params": {"n_clusters": 2, "weight_column": "w"}})
    assert_problem(response, 422, "weight_column 'w'", "float64")


def test_a_sweep_of_values_that_would_overflow_is_422_naming_the_column(api):
    ds = api.post(f"{BASE}/datasets", content=csv_of([[1e200, 1, 2], [2, 3, 4], [5, 6, 7]]),
                  headers={"Content-Type": CSV}).json()["id"]
    response = api.post(f"{BASE}/sweeps", json={"dataset_id": ds, "k_min": 1, "k_max": 2})
    assert_problem(response, 422, "column 'a'", "overflow")
