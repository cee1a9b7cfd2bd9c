"""/sweeps: choosing k by fitting a range of them."""

from __future__ import annotations

from typing import Any

from connexion import context

from kmeans import plots
from kmeans.api import media, service
from kmeans.api.models import EVENT_STREAM_SECONDS
from kmeans.api.validation import disconnected


def create_sweep(body: dict) -> Any:
    """Queue a sweep over k_min..k_max; 202 with Location."""
    sweep = service().create_sweep(
        body["dataset_id"], body["k_min"], body["k_max"], body.get("params"),
        time_limit=body.get("time_limit"), callback_url=body.get("callback_url"),
        stability_runs=body.get("stability_runs", 0), rule=body.get("rule", "consensus"),
    )
    return media.json(sweep, 202, Location=media.location(sweep["id"]))


def list_sweeps(offset: int = 0, limit: int = 100, dataset_id: str | None = None, project: str | None = None) -> Any:
    """A page of sweeps, newest first."""
    return media.json(service().list_sweeps(offset, limit, dataset_id, project))


def get_sweep(sweep_id: str, rule: str | None = None) -> Any:
    """One sweep: status, per-k metrics, recommended k (under ``rule``, if given)."""
    return media.json(service().get_sweep(sweep_id, rule))


def cancel_sweep(sweep_id: str) -> Any:
    """Cancel a queued or running sweep."""
    return media.json(service().cancel("sweep", sweep_id))


def delete_sweep(sweep_id: str) -> Any:
    """Delete a sweep (cancelled first if it still runs)."""
    service().delete_sweep(sweep_id)
    return media.no_content()


def get_sweep_events(sweep_id: str) -> Any:
    """Status and progress as Server-Sent Events until the sweep ends."""
    last = media.header("Last-Event-ID") or ""
    gone = disconnected(context.scope)
    changes = service().job_events("sweep", sweep_id, int(last) if last.isdigit() else None, EVENT_STREAM_SECONDS, gone)
    return media.event_stream(changes, "sweep")


def get_sweep_plot(sweep_id: str) -> Any:
    """Each metric over k, the recommended k marked (PNG)."""
    png = plots.sweep_png(service().get_sweep(sweep_id))
    return media.png_response(png)
