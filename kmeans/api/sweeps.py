"""/sweeps: choosing k by fitting a range of them."""

from __future__ import annotations

from typing import Any

from kmeans import plots
from kmeans.api import media, service
from kmeans.sweeps import sweeps_of


def create_sweep(body: dict) -> Any:
    """Queue a sweep over k_min..k_max; 202 with Location."""
    svc = service()
    dataset = svc.dataset_record(body["dataset_id"])
    sweep = sweeps_of(svc).create(dataset, body["k_min"], body["k_max"], body.get("params"))
    return media.json(sweep, 202, Location=media.location(sweep["id"]))


def list_sweeps(offset: int = 0, limit: int = 100, dataset_id: str | None = None, project: str | None = None) -> Any:
    """A page of sweeps, newest first."""
    return media.json(sweeps_of(service()).list(offset, limit, dataset_id, project))


def get_sweep(sweep_id: str) -> Any:
    """One sweep: status, per-k metrics, recommended k."""
    return media.json(sweeps_of(service()).get(sweep_id))


def get_sweep_plot(sweep_id: str) -> Any:
    """Each metric over k, the recommended k marked (PNG)."""
    png = plots.sweep_png(sweeps_of(service()).get(sweep_id))
    return media.png_response(png)
