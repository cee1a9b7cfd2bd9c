"""kmeans.csvio without HTTP: CSV variants people write, the errors they make, and output."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from kmeans import csvio
from kmeans.errors import Unprocessable


def read(content: bytes) -> tuple[list[list[float]], list[str]]:
    table = csvio.read_csv(io.BytesIO(content))
    assert table.values.dtype == np.float64
    return table.values.tolist(), table.columns


def refused(content: bytes) -> Unprocessable:
    with pytest.raises(Unprocessable) as caught:
        csvio.read_csv(io.BytesIO(content))
    assert caught.value.status == 422
    assert caught.value.detail
    return caught.value


# -- variants ------------------------------------------------------------------------------


def test_plain_rows_get_default_columns():
    assert read(b"1,2\n3,4\n") == ([[1, 2], [3, 4]], ["x1", "x2"])


def test_header_row_names_the_columns():
    assert read(b"x,y\n1,2\n3,4\n") == ([[1, 2], [3, 4]], ["x", "y"])


def test_spaces_after_commas():
    assert read(b"x, y\n1, 2\n3,   4\n") == ([[1, 2], [3, 4]], ["x", "y"])


def test_spaces_around_values():
    assert read(b" 1 , 2 \n3 ,4\n") == ([[1, 2], [3, 4]], ["x1", "x2"])


def test_crlf_line_ends():
    assert read(b"x,y\r\n1,2\r\n3,4\r\n") == ([[1, 2], [3, 4]], ["x", "y"])


def test_cr_only_line_ends():
    assert read(b"x,y\r1,2\r3,4\r") == ([[1, 2], [3, 4]], ["x", "y"])


def test_cr_only_line_ends_with_blank_lines_before_the_header():
    assert read(b"\r\rx,y\r1,2\r") == ([[1, 2]], ["x", "y"])


def test_utf8_bom_with_header():
    assert read(b"\xef\xbb\xbfx,y\n1,2\n") == ([[1, 2]], ["x", "y"])


def test_utf8_bom_without_header():
    assert read(b"\xef\xbb\xbf1,2\n3,4\n") == ([[1, 2], [3, 4]], ["x1", "x2"])


def test_no_trailing_newline():
    assert read(b"1,2\n3,4") == read(b"1,2\n3,4\n") == ([[1, 2], [3, 4]], ["x1", "x2"])


def test_single_row():
    assert read(b"5,6,7") == ([[5, 6, 7]], ["x1", "x2", "x3"])


def test_single_column():
    assert read(b"1\n2\n3\n") == ([[1], [2], [3]], ["x1"])
    assert read(b"size\n1\n2\n") == ([[1], [2]], ["size"])


def test_blank_lines_are_skipped():
    assert read(b"\n\nx,y\n\n1,2\n   \n3,4\n\n") == ([[1, 2], [3, 4]], ["x", "y"])


def test_header_with_an_empty_name_gets_a_default_one():
    assert read(b"x,\n1,2\n") == ([[1, 2]], ["x", "x2"])


def test_quoted_cells():
    assert read(b'"a","b"\n"1","2.5"\n') == ([[1, 2.5]], ["a", "b"])


def test_quoted_cells_after_spaces():
    assert read(b'"a", "b"\n"1", "2.5"\n') == ([[1, 2.5]], ["a", "b"])


def test_number_formats():
    rows, _ = read(b"+1,-2,.5,5.,1e3,-1.5E-2\n")
    assert rows == [[1, -2, 0.5, 5, 1000, -0.015]]


def test_full_precision():
    values = [0.1, 1 / 3, 123456789.12345679, 1e-300, -2.5e10, 2.0**-1074]
    rows, _ = read(",".join(repr(v) for v in values).encode())
    assert rows == [values]


def test_table_values_are_c_contiguous_float64():
    table = csvio.read_csv(io.BytesIO(b"1,2\n3,4\n"))
    assert table.values.flags.c_contiguous
    assert table.values.shape == (2, 2)


# -- errors --------------------------------------------------------------------------------


def test_empty_input():
    assert "empty" in refused(b"").detail


def test_only_blank_lines():
    assert "empty" in refused(b"\n \n\r\n").detail


def test_header_only():
    assert "no data rows" in refused(b"x,y\n").detail


def test_non_numeric_cell_names_row_and_column():
    error = refused(b"1,2\n3,4\n5,abc\n")
    assert "row 3, column 2" in error.detail and "abc" in error.detail
    assert (error.extra["row"], error.extra["column"]) == (3, 2)


def test_row_numbers_count_the_header_and_blank_lines():
    error = refused(b"x,y\n\n1,2\n3,oops\n")
    assert (error.extra["row"], error.extra["column"]) == (4, 2)


def test_row_with_too_many_values():
    error = refused(b"1,2\n3,4,5\n")
    assert "row 2" in error.detail
    assert error.extra["row"] == 2


def test_row_with_too_few_values():
    error = refused(b"1,2\n3,4\n5\n")
    assert "row 3" in error.detail
    assert error.extra["row"] == 3


def test_rows_wider_than_the_header():
    error = refused(b"x,y\n1,2,3\n4,5,6\n")
    assert error.extra["row"] == 2


def test_rows_narrower_than_the_header():
    error = refused(b"x,y,z\n1,2\n")
    assert error.extra["row"] == 2


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity", "1e999"])
def test_non_finite_values(cell: str):
    error = refused(f"1,2\n3,{cell}\n".encode())
    assert "row 2, column 2" in error.detail
    assert (error.extra["row"], error.extra["column"]) == (2, 2)


@pytest.mark.parametrize("cell", ["True", "1,000", "1.0.0", "1_000", "\uff14", "abc"])
def test_a_word_among_numbers_is_a_typo_named_by_row_and_column(cell: str):
    error = refused(f'1,2\n3,"{cell}"\n'.encode())
    assert (error.extra["row"], error.extra["column"]) == (2, 2)
    error = refused(f'1,2\n3,4\n5,6\n7,"{cell}"\n'.encode())
    assert (error.extra["row"], error.extra["column"]) == (4, 2)


@pytest.mark.parametrize("cell", ["", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "None", " NA "])
def test_na_markers_are_missing_values(cell: str):
    table = csvio.read_csv(io.BytesIO(f"x,y\n1,2\n3,{cell}\n".encode()))
    assert table.columns == table.numeric_columns == ["x", "y"]
    assert table.values[0].tolist() == [1, 2] and table.values[1, 0] == 3 and np.isnan(table.values[1, 1])


def test_na_values_option_replaces_the_markers():
    options = csvio.Options(na_values=("-", "?"))
    table = csvio.read_csv(io.BytesIO(b"x,y\n1,-\n?,4\n5,6\n"), options)
    assert np.isnan(table.values[0, 1]) and np.isnan(table.values[1, 0]) and table.values[2].tolist() == [5, 6]
    error = pytest.raises(Unprocessable, csvio.read_csv, io.BytesIO(b"x,y\n1,NA\n3,4\n5,6\n"), options).value
    assert (error.extra["row"], error.extra["column"]) == (2, 2)


def test_empty_cells_are_missing():
    table = csvio.read_csv(io.BytesIO(b"1,2\n,4\n"))
    assert np.isnan(table.values[1, 0]) and table.values[1, 1] == 4


def test_a_trailing_comma_is_an_empty_column():
    table = csvio.read_csv(io.BytesIO(b"1,2,\n3,4,\n"))
    assert table.columns == ["x1", "x2", "x3"] and np.isnan(table.values[:, 2]).all()


def test_text_columns_are_kept_as_text():
    table = csvio.read_csv(io.BytesIO(b"id,segment,x\nA1,gold,1.5\nA2,,2\nA3,silver,NA\n"))
    assert table.columns == ["id", "segment", "x"] and table.numeric_columns == ["x"]
    assert table.text["id"].tolist() == ["A1", "A2", "A3"]
    assert table.text["segment"].tolist() == ["gold", None, "silver"]
    assert table.values[:2, 0].tolist() == [1.5, 2] and np.isnan(table.values[2, 0])


def test_quoted_fields_keep_delimiters_and_line_breaks():
    table = csvio.read_csv(io.BytesIO(b'name,x\n"Smith, J.",1\n"two\nlines",2\n"say ""hi""",3\n'))
    assert table.text["name"].tolist() == ["Smith, J.", "two\nlines", 'say "hi"']
    assert table.values[:, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_the_delimiter_is_detected(delimiter: str):
    text = delimiter.join(["x", "y", "kind"]) + "\n" + delimiter.join(["1.5", "2", "a,b"]) + "\n"
    table = csvio.read_csv(io.BytesIO((text + text.split("\n")[1].replace("a,b", "c") + "\n").encode()))
    assert table.columns == ["x", "y", "kind"] and table.values.tolist() == [[1.5, 2], [1.5, 2]]
    assert table.text["kind"].tolist() == ["a,b", "c"]


def test_decimal_commas_with_semicolons():
    table = csvio.read_csv(io.BytesIO(b"x;y\n1,5;2\n-0,25;3,0\n"), csvio.Options(decimal=","))
    assert table.values.tolist() == [[1.5, 2], [-0.25, 3]]


def test_a_given_delimiter_that_splits_nothing_is_refused():
    with pytest.raises(Unprocessable) as caught:
        csvio.read_csv(io.BytesIO(b"x;y\n1;2\n3;4\n"), csvio.Options(delimiter="|"))
    assert caught.value.extra["parameter"] == "delimiter" and "';'" in caught.value.detail


def test_duplicate_header_names():
    error = refused(b"x,x\n1,2\n")
    assert "'x'" in error.detail
    assert (error.extra["row"], error.extra["column"]) == (1, 2)


def test_non_utf8_first_line():
    error = refused(b"x,caf\xe9\n1,2\n")
    assert "UTF-8" in error.detail


def test_non_utf8_later_line():
    assert "UTF-8" in refused(b"1,2\n3,\xff\n").detail


def test_utf16_file():
    assert "UTF-8" in refused("x,y\n1,2\n".encode("utf-16")).detail


def test_semicolon_separated_file_is_read():
    assert read(b"1;2\n3;4\n") == ([[1, 2], [3, 4]], ["x1", "x2"])


# -- the block-parallel fast path and the chunked reader agree ---------------------------

SAMPLES = [
    b"1,2\n3,4\n",
    b"x,y\n1,2\n3,4\n",
    b"x, y\n1, 2\n3,   4\n",
    b" 1 , 2 \n3 ,4\n",
    b"1,\t2\n3,4\n",
    b"x,y\r\n1,2\r\n3,4\r\n",
    b"x,y\r1,2\r3,4\r",
    b"\xef\xbb\xbfx,y\n1,2\n",
    b"\xef\xbb\xbf1,2\n3,4\n",
    b"1,2\n3,4",
    b"1\n2\n3\n",
    b"\n\nx,y\n\n1,2\n   \n3,4\n\n",
    b'"a","b"\n"1","2.5"\n"3","4"\n',
    b'"a", "b"\n"1", "2.5"\n3, "4"\n',
    b'1,"2\n"\n3,4\n5,6\n',
    b"+1,-2,.5,5.,1e3,-1.5E-2\n" * 5,
    b"1,2\n3,4\n5,abc\n",
    b"x,y\n\n1,2\n3,oops\n",
    b"1,2\n3,4,5\n",
    b"1,2\n3,4\n5\n",
    b"x,y\n1,2,3\n4,5,6\n",
    b"x,y,z\n1,2\n",
    b"1,2\n3,nan\n",
    b"1,2\n3,1e999\n",
    b"1,2\n,4\n",
    b"1,2,\n3,4,\n",
    b"1,2\n3,\xff\n",
    b"1;2\n3;4\n",
    b"x,y\n",
    b"x,y\n\n\n",
]


def outcome(content: bytes) -> tuple:
    """What read_csv makes of ``content``: the values, columns and chunk widths, or the error."""
    try:
        table = csvio.read_csv(io.BytesIO(content))
    except Unprocessable as error:
        return ("error", error.detail, error.extra)
    assert all(c.dtype == np.float64 and c.flags.c_contiguous for c in table.chunks)
    # NaN as None: two NaNs compare unequal in a list.
    return ("table", np.where(np.isnan(table.values), None, table.values).tolist(), table.columns)


def rows_text(rows: int, seed: int = 0) -> bytes:
    values = np.random.default_rng(seed).normal(0, 10, (rows, 3))
    out = io.BytesIO()
    np.savetxt(out, values, fmt="%.6f", delimiter=",")
    return out.getvalue()


@pytest.mark.parametrize("content", SAMPLES)
@pytest.mark.parametrize("block_bytes", [1, 5, 16])
def test_blocks_of_any_size_give_what_the_chunked_reader_gives(monkeypatch, content: bytes, block_bytes: int):
    whole = outcome(content)
    monkeypatch.setattr(csvio, "BLOCK_BYTES", block_bytes)
    in_blocks = outcome(content)
    monkeypatch.setattr(csvio, "_read_blocks", lambda handle: None)
    assert in_blocks == whole == outcome(content)


def test_a_large_file_is_parsed_in_blocks_by_threads(monkeypatch):
    content = b"a,b,c\n" + rows_text(5000)
    monkeypatch.setattr(csvio, "BLOCK_BYTES", 4096)
    table = csvio.read_csv(io.BytesIO(content))
    assert len(table.chunks) > 10 and table.rows == 5000 and table.columns == ["a", "b", "c"]
    reference = np.loadtxt(io.BytesIO(content), delimiter=",", skiprows=1)
    assert np.array_equal(table.values, reference)


@pytest.mark.parametrize(
    ("bad_row", "cell", "fragment"),
    [(4000, "abc", "'abc' is not a number"), (2500, "1.2.3", "is not a number"), (4999, "inf", "not a finite")],
)
def test_a_bad_cell_deep_in_a_large_file_is_named_as_by_the_chunked_reader(monkeypatch, bad_row, cell, fragment):
    lines = rows_text(5000, seed=1).split(b"\n")
    lines[bad_row - 1] = b"1.5," + cell.encode() + b",2.5"
    content = b"\n".join(lines)
    monkeypatch.setattr(csvio, "BLOCK_BYTES", 4096)
    error = refused(content)
    assert fragment in error.detail
    assert (error.extra["row"], error.extra["column"]) == (bad_row, 2)
    monkeypatch.setattr(csvio, "_read_blocks", lambda handle: None)
    chunked = refused(content)
    assert (chunked.detail, chunked.extra) == (error.detail, error.extra)


def test_ragged_blocks_are_refused_as_by_the_chunked_reader(monkeypatch):
    content = rows_text(3000) + b"1,2\n" * 10 + rows_text(3000)
    monkeypatch.setattr(csvio, "BLOCK_BYTES", 4096)
    error = refused(content)
    assert (error.extra["row"], "has 2 values but row 1 has 3") == (3001, error.detail.split(" ", 2)[2])
    monkeypatch.setattr(csvio, "_read_blocks", lambda handle: None)
    assert refused(content).detail == error.detail


def test_a_large_file_with_quotes_or_lone_cr_line_ends_takes_the_chunked_reader(monkeypatch):
    monkeypatch.setattr(csvio, "BLOCK_BYTES", 4096)
    quoted = rows_text(1000) + b'"1.5", "2",3\n' + rows_text(999)
    for content in (rows_text(2000).replace(b"\n", b"\r"), quoted):
        table = csvio.read_csv(io.BytesIO(content))
        assert len(table.chunks) == 1 and table.rows == 2000  # one chunk of CHUNK_ROWS rows
    assert csvio.read_csv(io.BytesIO(quoted)).values[1000].tolist() == [1.5, 2, 3]


# -- check_rows (JSON input) ---------------------------------------------------------------


def test_check_rows_returns_float64():
    values = csvio.check_rows([[1, 2], [3.5, 4]])
    assert values.dtype == np.float64
    assert values.tolist() == [[1, 2], [3.5, 4]]


def test_check_rows_ragged():
    with pytest.raises(Unprocessable) as caught:
        csvio.check_rows([[1, 2], [3, 4], [5]])
    assert caught.value.extra["row"] == 3


def test_check_rows_expected_width():
    with pytest.raises(Unprocessable):
        csvio.check_rows([[1, 2]], width=3)


def test_check_rows_non_finite():
    with pytest.raises(Unprocessable) as caught:
        csvio.check_rows([[1, 2], [3, float("nan")]])
    assert (caught.value.extra["row"], caught.value.extra["column"]) == (2, 2)


def test_check_rows_integer_too_large_for_a_float():
    with pytest.raises(Unprocessable) as caught:
        csvio.check_rows([[1, 2], [3, 10**400]])
    assert (caught.value.extra["row"], caught.value.extra["column"]) == (2, 2)


# -- output --------------------------------------------------------------------------------


def as_text(formatted: bytes | str) -> str:
    return formatted.decode() if isinstance(formatted, bytes) else formatted


def test_format_labels_one_integer_per_line():
    assert as_text(csvio.format_labels(np.array([1, 0, 2, 2], dtype=np.int32))) == "1\n0\n2\n2\n"


def test_format_labels_of_many_digits():
    labels = np.array([0, 10, 9, 123, 4567, 10], dtype=np.int32)
    assert as_text(csvio.format_labels(labels)) == "0\n10\n9\n123\n4567\n10\n"


def test_format_labels_of_every_label_up_to_1000():
    labels = np.random.default_rng(0).integers(0, 1000, size=5000).astype(np.int32)
    assert as_text(csvio.format_labels(labels)) == "".join(f"{v}\n" for v in labels.tolist())


def test_format_labels_never_writes_floats():
    text = as_text(csvio.format_labels(np.array([1, 0], dtype=np.int64)))
    assert "." not in text and "e" not in text


def test_format_labels_of_nothing():
    assert as_text(csvio.format_labels(np.array([], dtype=np.int32))) == ""


def test_format_table_header_and_full_precision():
    values = np.array([[1.0, 0.1], [1 / 3, -2.5e10]])
    text = csvio.format_table(values, ["x", "y"])
    lines = text.splitlines()
    assert lines[0] == "x,y"
    assert [[float(v) for v in line.split(",")] for line in lines[1:]] == values.tolist()
    assert text.endswith("\n")


def test_format_table_quotes_names_with_commas():
    text = csvio.format_table(np.array([[1.0, 2.0]]), ["a,b", 'say "hi"'])
    assert next(csv.reader(io.StringIO(text))) == ["a,b", 'say "hi"']


def test_format_table_round_trips_through_read_csv():
    values = np.random.default_rng(1).normal(size=(20, 3))
    text = csvio.format_table(values, ["a", "b", "c"])
    table = csvio.read_csv(io.BytesIO(text.encode()))
    assert table.columns == ["a", "b", "c"]
    assert table.values.tolist() == values.tolist()


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 8, 64 * 1024])
@pytest.mark.parametrize(
    "content",
    [
        b"x,y\r\n1,2\r\n", b"\n\n\r\nx,y\n1,2\n", b"x,y\r1,2\r", b"\xef\xbb\xbf\n1,2\n3,4\n",
        b"1,2\n", b"\n \n", b"x,caf\xe9\n1,2\n",
    ],
)
def test_the_first_line_is_the_same_whatever_window_is_looked_at_first(monkeypatch, content: bytes, window: int):
    expected = outcome(content)
    monkeypatch.setattr(csvio, "FIRST_LINE_WINDOW", window)
    assert outcome(content) == expected
