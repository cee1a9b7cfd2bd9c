"""Content negotiation and the shapes of CSV and JSON responses."""

from __future__ import annotations

from typing import Any, BinaryIO

import flask
import numpy as np

from kmeans import csvio

CSV = "text/csv"
JSON = "application/json"


def wants_csv(default: str = JSON) -> bool:
    """True when the client's Accept header prefers CSV (``default`` when it says neither)."""
    order = [CSV, JSON] if default == CSV else [JSON, CSV]
    return (flask.request.accept_mimetypes.best_match(order) or default) == CSV


def json(body: Any, status: int = 200, **headers: str) -> tuple[Any, int, dict[str, str]]:
    """A JSON response (the spec's error responses are problem+json, so say which)."""
    return body, status, {"Content-Type": JSON, **headers}


def csv_response(text: str, **headers: str) -> flask.Response:
    return flask.Response(text, status=200, mimetype=CSV, headers=headers)


def labels(values: np.ndarray, model_id: str, default: str = JSON, **headers: str) -> Any:
    """Labels as one integer per line (CSV) or ``{"model_id", "labels"}`` (JSON)."""
    if wants_csv(default):
        return csv_response(csvio.format_labels(values), **headers)
    return json({"model_id": model_id, "labels": values.tolist()}, **headers)


def location(resource_id: str) -> str:
    """The URL of a resource created under the requested collection."""
    return f"{flask.request.path.rstrip('/')}/{resource_id}"


def raw_body() -> BinaryIO:
    """The request body as a stream, read in chunks by the caller (never buffered whole)."""
    # The server's input stream ends with the body, also for chunked uploads without a
    # Content-Length, where Werkzeug's request.stream would read nothing.
    return flask.request.environ["wsgi.input"]
