"""GET /models/{id}/export and POST /models/import: models as portable JSON."""

from __future__ import annotations

from typing import Any

from kmeans import modelio, online
from kmeans.api import media, service


def export_model(model_id: str) -> Any:
    """The portable JSON document of a succeeded model."""
    svc = service()
    svc.model_centers(model_id)  # 404 / 409 unless fitted
    model = svc.get_model(model_id)
    centers = svc.fitted_centers(model)  # the current version
    counts = None
    if model.get("center_version"):
        counts = online.version(svc.store, model, model["center_version"])["counts"]
    return media.json(modelio.export(model, centers, counts))


def import_model(body: dict, project: str | None = None) -> Any:
    """A new succeeded model from an export document, in ``project``; 201 with Location."""
    svc = service()
    model_id = modelio.import_document(svc.store, body, svc.access.home(project))
    model = svc.get_model(model_id)
    location = media.location("").rsplit("/import", 1)[0] + f"/{model_id}"
    return media.json(model, 201, Location=location)
