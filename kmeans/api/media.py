"""Content negotiation, request bodies, and the shapes of CSV and JSON responses.

Handlers are plain functions that connexion runs in a thread pool (AsyncApp's, or FlaskApp's
WSGI threads); they see the request through connexion's context (its ASGI scope) and answer
Starlette responses (or connexion's ``(body, status, headers)`` tuples for JSON), which
:mod:`kmeans.api.adapter` serves as they are under AsyncApp and turns into Flask's under FlaskApp.
"""

from __future__ import annotations

import functools
import io
import json as jsonlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, BinaryIO

import numpy as np
from connexion import context
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from kmeans import csvio, scoring
from kmeans.api.validation import JSON_BODY, request_body, spooled_file
from kmeans.multipart import SpooledFile
from kmeans.service import Upload

CSV = "text/csv"
JSON = "application/json"
PNG = "image/png"
OCTET_STREAM = "application/octet-stream"
# Label responses longer than this are streamed in pieces of this many labels.
STREAM_LABELS = 262144
# JSON bodies up to this size are handled on the event loop (see inline_small_json).
INLINE_JSON_BYTES = 65536


def inline_small_json(handler: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run ``handler`` on the event loop when the request is a small JSON body, in connexion's
    thread pool otherwise.

    A small body arrives parsed and the work on it takes well under a millisecond, less than
    the hand-off to a worker thread and back costs (about half of a one-row prediction's time);
    a large or streamed body would hold the loop up, so it still goes to a thread.
    """

    @functools.wraps(handler)
    async def run(*args: Any, **kwargs: Any) -> Any:
        length = header("content-length") or ""
        if is_json() and length.isascii() and length.isdigit() and int(length) <= INLINE_JSON_BYTES:
            return handler(*args, **kwargs)
        return await run_in_threadpool(handler, *args, **kwargs)

    run.thread_handler = handler  # type: ignore[attr-defined]  # what FlaskApp calls (kmeans.api.adapter)
    return run


def wants_csv(default: str = JSON) -> bool:
    """True when the client's Accept header prefers CSV (``default`` when it says neither)."""
    accept = header("accept")
    if not accept:
        return default == CSV
    order = [CSV, JSON] if default == CSV else [JSON, CSV]
    return (parse_accept_header(accept, MIMEAccept).best_match(order) or default) == CSV


def is_json() -> bool:
    """Whether the request body is JSON (the operations that take several media types ask)."""
    return (header("content-type") or "").partition(";")[0].strip().lower() == JSON


def json_body() -> Any:
    """The JSON body, as connexion's validator parsed and checked it against the spec."""
    return context.scope[JSON_BODY]


def json(body: Any, status: int = 200, **headers: str) -> tuple[Any, int, dict[str, str]]:
    """A JSON response (the spec's error responses are problem+json, so say which)."""
    return body, status, {"Content-Type": JSON, **headers}


def no_content() -> Response:
    """204 without a body or Content-Type (the spec's only media types are the error ones)."""
    return Response(status_code=204)


def csv_response(text: str | bytes, **headers: str) -> Response:
    """A CSV document."""
    return Response(text, media_type=CSV, headers=headers)


def png_response(png: bytes) -> Response:
    """A PNG picture, labelled ``application/octet-stream`` for a client that asks for that rather than image/png."""
    # Generators that read only JSON, text and octet-stream answers (openapi-python-client) get the
    # picture as bytes through the spec's octet-stream alternative; the bytes are the same PNG.
    accept = header("accept")
    best = parse_accept_header(accept, MIMEAccept).best_match([PNG, OCTET_STREAM]) if accept else None
    return Response(png, media_type=OCTET_STREAM if best == OCTET_STREAM else PNG)


def csv_options(
    delimiter: str | None, decimal: str = ".", na_values: str | None = None, source: Any = None
) -> csvio.Options:
    """How to read a table body, from the query parameters of the operations that take one and
    what the body is (``source``: the multipart part; None: the raw body's Content-Type)."""
    from kmeans.service import table_format

    markers = csvio.NA_VALUES if na_values is None else tuple(m.strip() for m in na_values.split(","))
    if source is None:
        kind = table_format(header("content-type"))
    else:  # a spooled multipart part, or the framework's upload object
        part = spooled_file(context.scope, "file") or source
        kind = table_format(getattr(part, "content_type", None), getattr(part, "filename", None))
    return csvio.Options(
        delimiter="\t" if delimiter == "tab" else delimiter, decimal=decimal, na_values=markers, format=kind
    )


def unknown_header(unknown: dict[str, int] | None) -> dict[str, str]:
    """The ``X-Unknown-Categories`` header of a CSV answer (``column=count, …``), when there were any."""
    if not unknown:
        return {}
    return {"X-Unknown-Categories": ", ".join(f"{k}={v}" for k, v in unknown.items()).encode().decode("latin-1")}


def labels(
    values: Any,
    model_id: str,
    default: str = JSON,
    ids: list[str] | Any | None = None,
    unknown: dict[str, int] | None = None,
    names: list[str | None] | None = None,
    **headers: str,
) -> Any:
    """Labels as one integer per line (CSV) or ``{"model_id", "labels"}`` (JSON); with ``ids``,
    CSV ``id,label`` rows and JSON ``ids``; with cluster ``names``, CSV with a header and a
    ``label_name`` column, JSON ``label_names``; with ``unknown`` categories, JSON
    ``unknown_categories`` and the CSV header ``X-Unknown-Categories``.

    Large label sets are sent in pieces as they are formatted, never as one big string.
    """
    if names is not None and wants_csv(default):
        body = scoring.csv_bytes({"labels": np.asarray(values), "ids": ids, "label_names": names})
        return csv_response(body, **headers, **unknown_header(unknown))
    if ids is not None or unknown or names is not None:
        if wants_csv(default):
            body = scoring.csv_bytes({"labels": values, "ids": ids}) if ids is not None else csvio.format_labels(values)
            return csv_response(body, **headers, **unknown_header(unknown))
        doc: dict[str, Any] = {"model_id": model_id, "labels": np.asarray(values).tolist()}
        if names is not None:
            doc["label_names"] = names
        if ids is not None:
            doc["ids"] = ids if isinstance(ids, list) else ids.to_pylist()
        if unknown:
            doc["unknown_categories"] = unknown
        return Response(jsonlib.dumps(doc, separators=(",", ":")), media_type=JSON, headers=headers)
    if len(values) <= STREAM_LABELS:
        if wants_csv(default):
            return csv_response(csvio.format_labels(values), **headers)
        body = b'{"model_id":"%s","labels":[%s]}' % (model_id.encode(), _json_items(values))
        return Response(body, media_type=JSON, headers=headers)
    pieces = [values[i : i + STREAM_LABELS] for i in range(0, len(values), STREAM_LABELS)]
    if wants_csv(default):
        return StreamingResponse((csvio.format_labels(p) for p in pieces), media_type=CSV, headers=headers)

    def json_pieces() -> Iterator[bytes]:
        yield b'{"model_id":"%s","labels":[' % model_id.encode()
        for i, piece in enumerate(pieces):
            yield (b"," if i else b"") + _json_items(piece)
        yield b"]}"

    return StreamingResponse(json_pieces(), media_type=JSON, headers=headers)


def _json_items(values: Any) -> bytes:
    """Labels as the items of a JSON array (``0,2,1``), from the same byte table as CSV."""
    return csvio.format_labels(values)[:-1].replace(b"\n", b",")


def event_stream(changes: AsyncIterator[tuple[int, dict]], event: str) -> StreamingResponse:
    """A Server-Sent Events response of ``changes`` (see :func:`server_sent_events`)."""
    return StreamingResponse(
        server_sent_events(changes, event),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def server_sent_events(
    changes: AsyncIterator[tuple[int, dict]], event: str, keep_alive_every: int = 8
) -> AsyncIterator[bytes]:
    """Format ``(id, data)`` pairs as SSE; ``(0, {})`` pairs become an occasional keep-alive comment,
    which keeps proxies from closing an idle stream. An async generator, run on the event loop: a
    stream holds no thread of the handler pool while it waits (a hang-up is noticed by
    DisconnectMiddleware, and Starlette cancels the stream)."""
    yield b"retry: 1000\n\n"
    idle = 0
    async for event_id, data in changes:
        if event_id:
            idle = 0
            yield f"id: {event_id}\nevent: {event}\ndata: {jsonlib.dumps(data, separators=(',', ':'))}\n\n".encode()
        else:
            idle += 1
            if idle % keep_alive_every == 0:
                yield b": keep-alive\n\n"


def location(resource_id: str) -> str:
    """The URL of a resource created under the requested collection."""
    return f"{context.scope['path'].rstrip('/')}/{resource_id}"


def header(name: str) -> str | None:
    """A request header's value (None when absent), read from the ASGI scope (``connexion.request``
    builds a new request object, headers and all, at every use)."""
    key = name.lower().encode("latin-1")
    for field, value in context.scope["headers"]:
        if field == key:
            return value.decode("latin-1")
    return None


def upload(file: Any) -> tuple[Upload, str | None]:
    """The content and client file name of the multipart ``file`` parameter.

    The streaming validator has already written the part to disk; the framework only saw an
    empty placeholder for it.
    """
    spooled = spooled_file(context.scope, "file")
    if spooled is not None:
        return spooled, spooled.filename
    return file.file, file.filename


def raw_body() -> BinaryIO | SpooledFile:
    """The request body, already received in full on the event loop (RequestLimitsMiddleware): a
    small one as a stream over its bytes, a large one as its file on disk."""
    body = request_body(context.scope)
    return io.BytesIO(body) if isinstance(body, bytes) else body
