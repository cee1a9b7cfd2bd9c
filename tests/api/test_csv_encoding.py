"""A CSV file that is not UTF-8 somewhere is a 422 naming the row (the file line, counting the
header) and column of the first bad cell — for datasets, classic uploads and predictions, in
any delimiter, quoted or not, in numeric and text columns (issue 14)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_helpers import CSV, PROBLEM, fit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from kmeans.config import Settings
from server import build_app
from tests.conftest import local_client

HYPOTHESIS = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Bytes no UTF-8 decoder takes: a Latin-1 é, a lone continuation byte, a truncated sequence, an
# encoded surrogate, an overlong slash.
BAD = [b"caf\xe9", b"\xff", b"x\xc3", b"\xed\xa0\x80", b"\xc0\xaf"]


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[TestClient]:
    settings_ = Settings(data_dir=tmp_path_factory.mktemp("encoding") / "data", max_upload_bytes=1_000_000)
    with local_client(build_app(settings_)) as client:
        yield client


@st.composite
def tables(draw: st.DrawFn) -> tuple[bytes, int, int, str]:
    """A CSV file with a header and one bad cell: (file, its line, its column, delimiter)."""
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    width = draw(st.integers(1, 4))
    rows = draw(st.integers(1, 40))
    text = [draw(st.booleans()) for _ in range(width)]
    lines = [delimiter.join(f"c{j}" for j in range(width)).encode()]
    for i in range(rows):
        cells = [f'"t {i}{delimiter}x"' if text[j] and i % 3 == 0 else (f"t{i % 4}" if text[j] else f"{i}.5")
                 for j in range(width)]
        lines.append(delimiter.join(cells).encode())
    row = draw(st.integers(1, rows))  # a data row
    column = draw(st.integers(1, width))
    cells = lines[row].split(delimiter.encode()) if b'"' not in lines[row] else None
    if cells is None:  # a quoted cell holds the delimiter: rebuild the row with plain cells
        cells = [f"t{row}".encode() if text[j] else b"1.5" for j in range(width)]
    cells[column - 1] = draw(st.sampled_from(BAD)) + (b"" if text[column - 1] else b"7")
    lines[row] = delimiter.encode().join(cells)
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    return ending.join(lines) + ending, row + 1, column, delimiter


def assert_names_cell(response, line: int, column: int) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["row"] == line and problem["column"] == column, problem
    assert f"row {line}, column {column}" in problem["detail"] and "not UTF-8" in problem["detail"]


@HYPOTHESIS
@given(table=tables())
def test_a_dataset_names_the_row_and_column_that_is_not_utf8(api: TestClient, table) -> None:
    content, line, column, _ = table
    before = api.get("/kmeans/datasets").json()["total"]
    response = api.post("/kmeans/datasets", content=content, headers={"content-type": CSV})
    assert_names_cell(response, line, column)
    assert api.get("/kmeans/datasets").json()["total"] == before  # nothing stored


@HYPOTHESIS
@given(table=tables())
def test_a_multipart_upload_names_the_row_and_column_that_is_not_utf8(api: TestClient, table) -> None:
    content, line, column, _ = table
    response = api.post("/kmeans/datasets", files={"file": ("t.csv", content, CSV)})
    assert_names_cell(response, line, column)


def test_classic_upload_and_predictions_name_the_cell(api: TestClient) -> None:
    bad = b"x,y\n1,2\n3,4\n5,\xe96\n"
    assert_names_cell(api.post("/kmeans/upload", files={"file": ("m.csv", bad, CSV)}), 4, 2)
    dataset = api.post("/kmeans/datasets", content=b"x,y\n1,2\n3,4\n5,6\n", headers={"content-type": CSV}).json()
    model = fit(api, dataset["id"], n_clusters=2)
    points = b"y,x\n2,1\n\xff4,3\n"
    response = api.post(f"/kmeans/models/{model['id']}/predictions", content=points, headers={"content-type": CSV})
    assert_names_cell(response, 3, 1)


def test_a_bad_header_or_first_row_is_named(api: TestClient) -> None:
    for content in (b"a\xe9,y\n1,2\n", b"\xe9\n1\n"):
        response = api.post("/kmeans/datasets", content=content, headers={"content-type": CSV})
        assert response.status_code == 422, response.text
        assert response.json()["row"] == 1 and "row 1 is not UTF-8" in response.json()["detail"]
