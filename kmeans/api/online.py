"""Online updates of minibatch models and their versions (see kmeans.online)."""

from __future__ import annotations

from typing import Any

from kmeans import online, prep
from kmeans.api import media, service


def _model(model_id: str) -> dict[str, Any]:
    svc = service()
    svc.model_centers(model_id)  # 404 / 409 unless fitted
    return svc.get_model(model_id)


def push_model_data(model_id: str, file: Any = None) -> Any:
    """New rows (multipart file, raw CSV or JSON) move the centers: a new version."""
    svc = service()
    model = _model(model_id)
    online._check_updatable(model)  # 409 before reading a possibly large body
    if file is not None:
        table = svc.points(model, source=media.upload(file)[0])
    elif media.is_json():
        table = svc.points(model, data=media.json_body()["data"])
    else:
        table = svc.points(model, source=media.raw_body())
    encoded, _ = prep.encode(table, model["preprocessing"], model_id)
    return media.json(online.push(svc.store, model, encoded, table.first_row))


def list_model_versions(model_id: str) -> Any:
    return media.json(online.versions(service().store, _model(model_id)))


def get_model_version(model_id: str, version: int) -> Any:
    return media.json(online.version(service().store, _model(model_id), version))


def restore_model_version(model_id: str, version: int) -> Any:
    return media.json(online.restore(service().store, _model(model_id), version))
