"""kmeans.multipart.SpoolingReader: a body parsed while it arrives, spooled and hashed on the way."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from kmeans import csvio
from kmeans.errors import PayloadTooLarge, Unprocessable
from kmeans.multipart import SpoolingReader


class Trickle(io.RawIOBase):
    """A body that arrives in small pieces, as a network stream does."""

    def __init__(self, data: bytes, piece: int = 7) -> None:
        self.data, self.piece, self.at = data, piece, 0

    def read(self, size: int = -1) -> bytes:
        size = self.piece if size < 0 else min(size, self.piece)
        out = self.data[self.at : self.at + size]
        self.at += len(out)
        return out


def reader(tmp_path: Path, body: bytes, head: int = 10, limit: int = 10**9) -> SpoolingReader:
    return SpoolingReader(Trickle(body[head:]), body[:head], tmp_path / "spool.csv", limit,
                          lambda: PayloadTooLarge("too large"), chunk_bytes=16)


def test_reads_seeks_and_finish_give_the_body_its_hash_and_size(tmp_path):
    body = bytes(range(256)) * 10
    spool = reader(tmp_path, body)
    assert spool.read(3) == body[:3]
    assert spool.read(100) == body[3:103]
    spool.seek(1)
    assert spool.read(50) == body[1:51]
    spool.seek(2000)
    assert spool.read(5) == body[2000:2005] and spool.tell() == 2005
    spool.seek(0)
    assert spool.read() == body
    assert spool.read(10) == b""
    done = spool.finish()
    assert (done.size, done.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    spool.close()
    assert done.path.read_bytes() == body


def test_finish_spools_what_the_parser_did_not_read(tmp_path):
    body = b"x" * 1000
    spool = reader(tmp_path, body)
    spool.read(20)
    assert spool.finish().sha256 == hashlib.sha256(body).hexdigest()


def test_a_body_over_the_limit_raises_as_it_is_read(tmp_path):
    spool = reader(tmp_path, b"1,2\n" * 100, limit=200)
    with pytest.raises(PayloadTooLarge):
        spool.read(1000)
    with pytest.raises(PayloadTooLarge):
        reader(tmp_path, b"1,2\n" * 100, head=300, limit=200)


@pytest.mark.parametrize("block_bytes", [64, 4 * 1024 * 1024])
def test_read_csv_over_it_equals_read_csv_of_the_bytes(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(csvio, "BLOCK_BYTES", block_bytes)
    values = np.random.default_rng(0).normal(size=(300, 3))
    out = io.BytesIO()
    np.savetxt(out, values, fmt="%.6f", delimiter=",", header="a,b,c", comments="")
    body = out.getvalue()
    table = csvio.read_csv(reader(tmp_path, body))
    assert table.columns == ["a", "b", "c"]
    assert np.array_equal(table.values, csvio.read_csv(io.BytesIO(body)).values)


@pytest.mark.parametrize("block_bytes", [64, 4 * 1024 * 1024])
def test_errors_over_it_name_the_same_row_and_column(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(csvio, "BLOCK_BYTES", block_bytes)
    body = b"1,2\n" * 50 + b'3,"x"\n' + b"1,2\n" * 50
    with pytest.raises(Unprocessable) as direct:
        csvio.read_csv(io.BytesIO(body))
    with pytest.raises(Unprocessable) as spooled:
        csvio.read_csv(reader(tmp_path, body))
    assert (spooled.value.detail, spooled.value.extra) == (direct.value.detail, direct.value.extra) != ("", {})
    assert direct.value.extra == {"row": 51, "column": 2}
