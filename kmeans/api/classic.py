"""The original example's three endpoints, same request shapes, over the resource machinery."""

from __future__ import annotations

from typing import Any

from kmeans.api import media, service


def upload(file: Any) -> Any:
    """Store an uploaded CSV and number it with a job_id."""
    return media.json(service().classic_upload(*media.upload(file)))


def fit(body: dict) -> Any:
    """Fit the upload ``job_id`` and answer its labels (CSV unless JSON is asked for)."""
    model, labels = service().classic_fit(body["job_id"], body.get("model_params"))
    return media.labels(labels, model["id"], default=media.CSV, **{"X-Model-Id": model["id"]})


def predict(body: dict, file: Any) -> Any:
    """Label the points of an uploaded CSV with the model of ``job_id``."""
    model_id, labels = service().classic_predict(body["job_id"], media.upload(file)[0])
    return media.labels(labels, model_id, default=media.CSV)
