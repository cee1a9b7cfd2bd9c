"""/models/{model_id}/scorings: batch scoring of a stored dataset, as a background job."""

from __future__ import annotations

from typing import Any

from connexion import context
from starlette.responses import StreamingResponse
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from kmeans.api import media, service
from kmeans.api.models import EVENT_STREAM_SECONDS
from kmeans.api.validation import disconnected

PARQUET = "application/vnd.apache.parquet"


def create_scoring(model_id: str, body: dict) -> Any:
    """Queue the scoring of a dataset with a model; 202 with Location."""
    scoring = service().create_scoring(
        model_id, body["dataset_id"], threshold=body.get("threshold"), time_limit=body.get("time_limit")
    )
    return media.json(scoring, 202, Location=media.location(scoring["id"]))


def list_scorings(model_id: str, offset: int = 0, limit: int = 100) -> Any:
    """A page of a model's scorings, newest first."""
    return media.json(service().list_scorings(model_id, offset, limit))


def get_scoring(model_id: str, scoring_id: str) -> Any:
    """One scoring: status, progress, rows scored."""
    return media.json(service().get_scoring(model_id, scoring_id))


def cancel_scoring(model_id: str, scoring_id: str) -> Any:
    """Cancel a queued or running scoring."""
    return media.json(service().cancel_scoring(model_id, scoring_id))


def delete_scoring(model_id: str, scoring_id: str) -> Any:
    """Delete a scoring and its result (cancelled first if it still runs)."""
    service().delete_scoring(model_id, scoring_id)
    return media.no_content()


def get_scoring_events(model_id: str, scoring_id: str) -> Any:
    """Status and progress as Server-Sent Events until the scoring ends."""
    last = media.header("Last-Event-ID") or ""
    gone = disconnected(context.scope)
    changes = service().scoring_events(
        model_id, scoring_id, int(last) if last.isdigit() else None, EVENT_STREAM_SECONDS, gone
    )
    return media.event_stream(changes, "scoring")


def _wanted() -> str:
    """The result format the Accept header prefers: JSON (the default), CSV or Parquet."""
    accept = media.header("accept")
    if not accept:
        return media.JSON
    return parse_accept_header(accept, MIMEAccept).best_match([media.JSON, media.CSV, PARQUET]) or media.JSON


def get_scoring_result(model_id: str, scoring_id: str, offset: int = 0, limit: int = 100) -> Any:
    """The result: a JSON page, or all of it as streamed CSV or Parquet."""
    result = service().scoring_result(model_id, scoring_id)
    wanted = _wanted()
    if wanted == media.CSV:
        named = {"Content-Disposition": f'attachment; filename="{scoring_id}.csv"'}
        return StreamingResponse(result.csv_chunks(), media_type=media.CSV, headers=named)
    if wanted == PARQUET:
        named = {"Content-Disposition": f'attachment; filename="{scoring_id}.parquet"'}
        return StreamingResponse(result.parquet_chunks(), media_type=PARQUET, headers=named)
    return media.json(result.page(offset, limit))
