"""Content negotiation and the shapes of CSV and JSON responses."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Iterator
from typing import Any, BinaryIO

import flask
import numpy as np

from kmeans import csvio
from kmeans.api.validation import spooled_file
from kmeans.service import Upload

CSV = "text/csv"
JSON = "application/json"
# Label responses longer than this are streamed in pieces of this many labels.
STREAM_LABELS = 262144


def wants_csv(default: str = JSON) -> bool:
    """True when the client's Accept header prefers CSV (``default`` when it says neither)."""
    order = [CSV, JSON] if default == CSV else [JSON, CSV]
    return (flask.request.accept_mimetypes.best_match(order) or default) == CSV


def json(body: Any, status: int = 200, **headers: str) -> tuple[Any, int, dict[str, str]]:
    """A JSON response (the spec's error responses are problem+json, so say which)."""
    return body, status, {"Content-Type": JSON, **headers}


def no_content() -> flask.Response:
    """204 without a body or Content-Type (the spec's only media types are the error ones)."""
    return flask.Response(status=204)


def csv_response(text: str | bytes, **headers: str) -> flask.Response:
    return flask.Response(text, status=200, mimetype=CSV, headers=headers)


def labels(values: np.ndarray, model_id: str, default: str = JSON, **headers: str) -> Any:
    """Labels as one integer per line (CSV) or ``{"model_id", "labels"}`` (JSON).

    Large label sets are sent in pieces as they are formatted, never as one big string.
    """
    if len(values) <= STREAM_LABELS:
        if wants_csv(default):
            return csv_response(csvio.format_labels(values), **headers)
        return json({"model_id": model_id, "labels": values.tolist()}, **headers)
    pieces = [values[i : i + STREAM_LABELS] for i in range(0, len(values), STREAM_LABELS)]
    if wants_csv(default):
        return flask.Response((csvio.format_labels(p) for p in pieces), mimetype=CSV, headers=headers)

    def json_pieces() -> Iterator[bytes]:
        yield b'{"model_id":"%s","labels":[' % model_id.encode()
        for i, piece in enumerate(pieces):
            yield (b"," if i else b"") + csvio.format_labels(piece)[:-1].replace(b"\n", b",")
        yield b"]}"

    return flask.Response(json_pieces(), mimetype=JSON, headers=headers)


def server_sent_events(changes: Iterator[tuple[int, dict]], event: str, keep_alive_every: int = 8) -> Iterator[bytes]:
    """Format ``(id, data)`` pairs as SSE; ``(0, {})`` pairs become an occasional keep-alive comment,
    which keeps proxies from closing an idle stream. (A hang-up is noticed by DisconnectMiddleware.)"""
    yield b"retry: 1000\n\n"
    idle = 0
    for event_id, data in changes:
        if event_id:
            idle = 0
            yield f"id: {event_id}\nevent: {event}\ndata: {jsonlib.dumps(data, separators=(',', ':'))}\n\n".encode()
        else:
            idle += 1
            if idle % keep_alive_every == 0:
                yield b": keep-alive\n\n"


def location(resource_id: str) -> str:
    """The URL of a resource created under the requested collection."""
    return f"{flask.request.path.rstrip('/')}/{resource_id}"


def upload(file: Any) -> tuple[Upload, str | None]:
    """The content and client file name of a multipart file parameter.

    The streaming validator has already written the part to disk; the framework only saw an
    empty placeholder for it.
    """
    spooled = spooled_file(flask.request.environ["asgi.scope"], file.name)
    if spooled is not None:
        return spooled, spooled.filename
    return file.stream, file.filename


def raw_body() -> BinaryIO:
    """The request body as a stream, read in chunks by the caller (never buffered whole)."""
    # The server's input stream ends with the body, also for chunked uploads without a
    # Content-Length, where Werkzeug's request.stream would read nothing.
    return flask.request.environ["wsgi.input"]
