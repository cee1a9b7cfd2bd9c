"""Hostile input that used to get a 500 or a misleading answer (issue 14, item 5), as classes:
JSON nested very deep, integers of thousands of digits (Python's int-string limit) in bodies,
query and path parameters, request bodies in a content coding the service does not decode,
``Allow``/405 for concrete paths that look like templated ones, and a fuzz of headers and
bodies that must never get a 5xx."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from api_helpers import CSV, JSON, MODEL_CSV, PROBLEM, assert_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from kmeans.api.specdoc import base_path
from kmeans.api.validation import MAX_JSON_DEPTH, json_depth
from kmeans.config import Settings
from server import build_app
from tests.conftest import ROOT, local_client

SPEC = yaml.safe_load((ROOT / "api.yaml").read_text())
BASE = base_path(SPEC)
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
LIMIT = sys.get_int_max_str_digits()
UNKNOWN = {"model_id": "m_0000000000000000", "dataset_id": "ds_0000000000000000", "version": "1"}
STORED: dict[str, str] = {}  # the ids of what the api fixture stored
HYPOTHESIS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def concrete(path: str, ids: dict[str, str] = UNKNOWN) -> str:
    """A URL of the spec path ``path`` (by default with ids that need not exist: validation comes first)."""
    return BASE + re.sub(r"\{([^}]+)\}", lambda m: ids.get(m.group(1), "x_0000000000000000"), path)


def operations(media_type: str | None = None) -> list[tuple[str, str]]:
    """(method, spec path) of every operation, or of those whose request body may be ``media_type``."""
    found = []
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            content = operation.get("requestBody", {}).get("content", {})
            if media_type is None or media_type in content:
                found.append((method.upper(), path))
    return found


JSON_OPERATIONS = operations(JSON)
BODY_OPERATIONS = [(m, p) for m, p in operations() if SPEC["paths"][p][m.lower()].get("requestBody")]


@pytest.fixture(scope="module")
def api(tmp_path_factory, app_class: type) -> Iterator[TestClient]:
    settings_ = Settings(data_dir=tmp_path_factory.mktemp("hardening") / "data", max_upload_bytes=1_000_000)
    with local_client(build_app(settings_, app_class)) as client:
        # A classic upload (job_id 0) with a fitted model, for the fuzz to reach the handlers.
        uploaded = client.post(f"{BASE}/upload", files={"file": ("model.csv", MODEL_CSV, CSV)})
        assert uploaded.status_code == 200, uploaded.text
        fit = {"job_id": 0, "model_params": {"n_clusters": 2}}
        fitted = client.post(f"{BASE}/fit", json=fit, headers={"accept": JSON})
        assert fitted.status_code == 200, fitted.text
        STORED.update(dataset_id=uploaded.json()["dataset_id"], model_id=fitted.json()["model_id"], version="1")
        yield client


def no_server_error(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and response.request.method != "HEAD":
        assert response.headers["content-type"].startswith(PROBLEM), response.headers


def nested(depth: int, kind: str, leaf: str = "1") -> str:
    """``depth`` arrays (or objects) in one another around ``leaf``."""
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    return '{"a":' * depth + leaf + "}" * depth


# -- JSON nested very deep --------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), JSON_OPERATIONS)
@HYPOTHESIS
@given(
    depth=st.one_of(st.integers(MAX_JSON_DEPTH + 1, 300), st.sampled_from([1000, 5000, 100_000])),
    kind=st.sampled_from(["array", "object"]),
    where=st.sampled_from(["body", "field"]),
)
def test_json_nested_deeper_than_the_limit_is_400_for_every_json_operation(api, method, path, depth, kind, where):
    value = nested(depth, kind)
    body = value if where == "body" else '{"data":' + nested(depth - 1, kind) + "}"
    response = api.request(method, concrete(path), content=body, headers={"content-type": JSON})
    assert_problem(response, 400, f"nested deeper than {MAX_JSON_DEPTH} levels")


@pytest.mark.parametrize(("method", "path"), JSON_OPERATIONS)
@HYPOTHESIS
@given(depth=st.integers(1, MAX_JSON_DEPTH), kind=st.sampled_from(["array", "object"]))
def test_json_nested_up_to_the_limit_is_never_a_500(api, method, path, depth, kind):
    # Parsed, then checked by jsonschema and maybe a handler: none of them may run out of stack.
    for body in (nested(depth, kind), '{"data":' + nested(depth - 1, kind) + "}" if depth > 1 else "{}"):
        response = api.request(method, concrete(path), content=body, headers={"content-type": JSON})
        no_server_error(response)
        assert "nested deeper" not in response.text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(alphabet='[]{}"\\ab\n'),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(alphabet='[]{}"\\a'), children, max_size=4),
    max_leaves=40,
)


def real_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(real_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(real_depth, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(value=json_values, indent=st.sampled_from([None, 1]), ascii_only=st.booleans())
def test_json_depth_counts_structure_only_never_brackets_in_strings(value, indent, ascii_only):
    assert json_depth(json.dumps(value, indent=indent, ensure_ascii=ascii_only)) == real_depth(value)


# -- integers of thousands of digits -----------------------------------------------------


@pytest.mark.parametrize(("method", "path"), JSON_OPERATIONS)
@HYPOTHESIS
@given(
    digits=st.integers(LIMIT + 1, 3 * LIMIT), sign=st.sampled_from(["", "-"]), field=st.sampled_from(["top", "deep"])
)
def test_a_json_integer_beyond_the_int_string_limit_is_400_naming_the_field(api, method, path, digits, sign, field):
    number = sign + "7" * digits
    if field == "top":
        body, name = '{"job_id":' + number + "}", "'job_id'"
    else:
        body, name = '{"data":[[1,2],[3,' + number + "]]}", "'data.1.1'"
    response = api.request(method, concrete(path), content=body, headers={"content-type": JSON})
    problem = assert_problem(response, 400, name, f"{digits} digits")
    assert problem["parameter"] == name.strip("'")


def integer_parameters() -> list[tuple[str, str, str, str]]:
    """(method, spec path, where, name) of every integer query and path parameter."""
    def resolve(node: dict) -> dict:
        while "$ref" in node:
            target: Any = SPEC
            for key in node["$ref"].removeprefix("#/").split("/"):
                target = target[key]
            node = target
        return node

    found = []
    for path, item in SPEC["paths"].items():
        for method in (m for m in item if m in METHODS):
            for parameter in map(resolve, [*item.get("parameters", []), *item[method].get("parameters", [])]):
                if resolve(parameter.get("schema", {})).get("type") == "integer":
                    found.append((method.upper(), path, parameter["in"], parameter["name"]))
    return sorted(set(found))


INTEGER_PARAMETERS = integer_parameters()


def test_the_spec_has_integer_parameters_of_both_kinds():
    assert {where for _, _, where, _ in INTEGER_PARAMETERS} >= {"query", "path"}


@pytest.mark.parametrize(("method", "path", "where", "name"), INTEGER_PARAMETERS)
@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(digits=st.integers(LIMIT + 1, 4 * LIMIT), leading_zeros=st.booleans())
def test_an_integer_parameter_beyond_the_int_string_limit_is_400_naming_it(
    api, method, path, where, name, digits, leading_zeros
):
    number = ("0" * (digits - 1) + "1") if leading_zeros else "9" * digits
    url = concrete(path)
    if where == "path":
        url = BASE + re.sub(r"\{([^}]+)\}", lambda m: number if m.group(1) == name else "m_0000000000000000", path)
    else:
        url += f"?{name}={number}"
    has_body = "requestBody" in SPEC["paths"][path][method.lower()]
    response = api.request(method, url, **({"json": {"data": [[1, 2]]}} if has_body else {}))
    problem = assert_problem(response, 400, f"{where} parameter '{name}'", f"{digits} digits")
    assert len(problem["detail"]) < 300  # the value is not echoed


@pytest.mark.both_apps
@pytest.mark.parametrize("length", ["9" * 5000, "1" + "0" * 30, "0" * 5000 + "2000000"])
def test_a_content_length_of_thousands_of_digits_is_413(api, length):
    response = api.post(f"{BASE}/datasets", content=MODEL_CSV, headers={"content-type": CSV, "content-length": length})
    assert_problem(response, 413, "larger than the limit")


def test_a_content_length_with_leading_zeros_is_its_number(api):
    body = json.dumps({"dataset_id": "ds_0000000000000000", "params": {"n_clusters": 2}}).encode()
    response = api.post(
        f"{BASE}/models", content=body, headers={"content-type": JSON, "content-length": "0" * 5000 + str(len(body))}
    )
    assert_problem(response, 404, "ds_0000000000000000")


# -- content codings ----------------------------------------------------------------------

codings = st.one_of(
    st.sampled_from(["gzip", "br", "deflate", "compress", "zstd", "x-gzip", "GZIP", "gzip, identity", "identity, br"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(lambda c: c != "identity"),
)


@pytest.mark.both_apps
@pytest.mark.parametrize(("method", "path"), BODY_OPERATIONS)
@HYPOTHESIS
@given(coding=codings, media_type=st.sampled_from([CSV, JSON]))
def test_a_body_in_a_content_coding_is_415_naming_it(api, method, path, coding, media_type):
    datasets = api.get(f"{BASE}/datasets").json()["total"]
    body = MODEL_CSV if media_type == CSV else b'{"job_id": 0, "data": [[1, 2]]}'
    response = api.request(
        method, concrete(path), content=body, headers={"content-type": media_type, "content-encoding": coding}
    )
    named = [c.strip().lower() for c in coding.split(",") if c.strip().lower() != "identity"][0]
    assert_problem(response, 415, f"Content-Encoding: {named}")
    assert response.headers["accept-encoding"] == "identity"
    assert api.get(f"{BASE}/datasets").json()["total"] == datasets  # nothing stored


def test_identity_is_no_content_coding(api):
    response = api.post(
        f"{BASE}/datasets", content=MODEL_CSV, headers={"content-type": CSV, "content-encoding": "identity"}
    )
    assert response.status_code == 201, response.text


def test_a_content_coding_without_a_body_is_ignored(api):
    assert api.get(f"{BASE}/ping", headers={"content-encoding": "gzip"}).status_code == 200


# -- Allow and 405 for concrete paths beside templated ones ----------------------------------

PATHS = {path: sorted(m.upper() for m in item if m in METHODS) for path, item in SPEC["paths"].items()}


def allowed(response: Any) -> list[str]:
    return sorted(m.strip() for m in response.headers["allow"].split(","))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_options_allows_exactly_the_methods_of_the_path(api, path):
    response = api.options(concrete(path))
    assert_problem(response, 405)
    assert allowed(response) == PATHS[path]


@pytest.mark.both_apps
@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_undeclared_method_is_405_with_the_path_s_methods(api, path):
    for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - set(PATHS[path])):
        response = api.request(method, concrete(path))
        assert_problem(response, 405, method)
        assert allowed(response) == PATHS[path], method
    if "GET" in PATHS[path] and not path.endswith("/events"):  # HEAD goes with GET (a stream's would not end)
        assert api.head(concrete(path)).status_code != 405


def concrete_template_pairs() -> list[tuple[str, str]]:
    """Every pair of spec paths where a concrete one also matches a templated one."""
    templates = {p: re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(p))) for p in PATHS}
    return [(c, t) for c in PATHS for t in PATHS if c != t and "{" not in c and templates[t].fullmatch(c)]


def test_the_spec_has_concrete_paths_beside_templated_ones():
    assert ("/models/import", "/models/{model_id}") in concrete_template_pairs()


@pytest.mark.both_apps
@pytest.mark.parametrize(("concrete_path", "template"), concrete_template_pairs())
def test_a_concrete_path_answers_as_itself_not_as_the_template(api, concrete_path, template):
    for method in sorted(set(PATHS[template]) - set(PATHS[concrete_path])):
        response = api.request(method, BASE + concrete_path)
        assert_problem(response, 405)  # not the template's "no model with id import"
        assert allowed(response) == PATHS[concrete_path]
    assert allowed(api.request("HEAD", BASE + concrete_path)) == PATHS[concrete_path]


# -- a fuzz of headers and bodies: never a 5xx ------------------------------------------------

FUZZ_OPERATIONS = [
    ("POST", "/fit"),
    ("POST", "/datasets"),
    ("POST", "/models"),
    ("POST", "/models/{model_id}/predictions"),
    ("POST", "/models/import"),
    ("GET", "/models"),
    ("GET", "/models/{model_id}/events"),
]
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
fuzz_headers = st.dictionaries(
    st.sampled_from(
        ["content-type", "accept", "content-encoding", "content-length", "last-event-id", "idempotency-key",
         "authorization", "x-forwarded-for", "transfer-encoding", "range", "if-none-match"]
    ),
    st.one_of(
        header_text,
        st.sampled_from(
            [JSON, CSV, "multipart/form-data", "multipart/form-data; boundary=", f"{JSON}; charset=latin-9",
             f"{JSON}; charset=utf-16", "text/plain", "*/*", "gzip", "9" * 5000, "0" * 5000, "-1", "1" * 30,
             "Bearer", "Bearer x"]
        ),
    ),
    max_size=4,
)
fuzz_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"{}", b"[]", b"null", b'"x"', b"1e999", b"NaN", b"-Infinity", MODEL_CSV]),
    st.builds(lambda n: b'{"data":[[' + b"9" * n + b"]]}", st.integers(1, 6000)),
    st.builds(lambda d: b"[" * d + b"]" * d, st.integers(1, 3000)),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@pytest.mark.parametrize(("method", "path"), FUZZ_OPERATIONS)
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=fuzz_headers, body=fuzz_bodies, query=st.sampled_from(["", "?offset=" + "9" * 5000, "?limit=%00", "?x=1"])
)
def test_fuzzed_headers_and_bodies_never_get_a_5xx(api, method, path, headers, body, query):
    if "transfer-encoding" in headers:  # the test client cannot frame such a body
        headers.pop("transfer-encoding")
    if method == "GET":
        body = b""
    try:
        response = api.request(method, concrete(path, STORED) + query, content=body, headers=headers)
    except (ValueError, UnicodeError):  # the test client refused to send it: nothing reached the app
        return
    no_server_error(response)


@pytest.mark.parametrize(("method", "path"), BODY_OPERATIONS)
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.sampled_from([b"null", b"{}", b"[]", b'{"params": {"n_clusters": 2}}', b"1", MODEL_CSV]) | fuzz_bodies)
def test_a_body_without_a_content_type_is_never_a_5xx(api, method, path, body):
    # connexion validated it as the operation's first media type, and the handler got raw bytes
    # (POST /models/{id}/copy with `null` was a 500); now both see that media type.
    response = api.request(method, concrete(path, STORED), content=body)
    assert "content-type" not in response.request.headers
    no_server_error(response)
