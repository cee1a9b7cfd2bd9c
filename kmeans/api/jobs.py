"""/jobs and /events: the queue of background work, and a project's live event stream."""

from __future__ import annotations

from typing import Any

from connexion import context

from kmeans.api import media, service
from kmeans.api.models import EVENT_STREAM_SECONDS
from kmeans.api.validation import disconnected


def list_jobs(
    offset: int = 0, limit: int = 100, status: str | None = None, kind: str | None = None, project: str | None = None
) -> Any:
    """The queue: running jobs, then queued ones in the order they start."""
    return media.json(service().list_jobs(offset, limit, status, kind, project))


def get_events(project: str | None = None) -> Any:
    """Every job change in the caller's project, as Server-Sent Events."""
    last = media.header("Last-Event-ID") or ""
    gone = disconnected(context.scope)
    changes = service().project_events(int(last) if last.isdigit() else None, EVENT_STREAM_SECONDS, project, gone)
    return media.event_stream(changes, "job")
