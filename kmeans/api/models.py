"""/models: fits of datasets, their results, and predictions with them."""

from __future__ import annotations

from typing import Any

from connexion import context

from kmeans import csvio, scoring
from kmeans.api import media, service
from kmeans.api.validation import disconnected

# A stream ends after this long even if the fit goes on; EventSource reconnects with Last-Event-ID.
EVENT_STREAM_SECONDS = 3600


def create_model(body: dict) -> Any:
    """Queue a fit; 202 with the queued model (the earlier one for a repeated Idempotency-Key)."""
    model, created = service().create_model(
        body["dataset_id"],
        body.get("params"),
        time_limit=body.get("time_limit"),
        callback_url=body.get("callback_url"),
        idempotency_key=media.header("Idempotency-Key"),
    )
    replayed = {} if created else {"Idempotent-Replayed": "true"}
    return media.json(model, 202, Location=media.location(model["id"]), **replayed)


def cancel_model(model_id: str) -> Any:
    """Cancel a queued or running fit."""
    return media.json(service().cancel_model(model_id))


def get_model_events(model_id: str) -> Any:
    """Status and progress as Server-Sent Events until the fit ends."""
    last = media.header("Last-Event-ID") or ""
    gone = disconnected(context.scope)
    changes = service().model_events(model_id, int(last) if last.isdigit() else None, EVENT_STREAM_SECONDS, gone)
    return media.event_stream(changes, "model")


def list_models(
    offset: int = 0,
    limit: int = 100,
    dataset_id: str | None = None,
    status: str | None = None,
    project: str | None = None,
) -> Any:
    """A page of models, newest first."""
    return media.json(service().list_models(offset, limit, dataset_id, status, project))


def get_model(model_id: str) -> Any:
    """One model and the state of its fit."""
    return media.json(service().get_model(model_id))


def delete_model(model_id: str) -> Any:
    """Delete a model."""
    service().delete_model(model_id)
    return media.no_content()


def get_model_labels(model_id: str) -> Any:
    """Labels of the training rows (with the dataset's ids when it has an id column)."""
    labels, ids, names = service().named_labels(model_id)
    return media.labels(labels, model_id, ids=ids, names=names)


def patch_model(model_id: str, body: dict) -> Any:
    """Change what may change on a fitted model: its cluster names (a JSON merge patch)."""
    return media.json(service().name_clusters(model_id, body.get("cluster_names") or {}))


def get_model_profile(model_id: str) -> Any:
    """What sets each cluster apart, in the dataset's units (JSON, or CSV with Accept: text/csv)."""
    doc = service().model_profile(model_id)
    if media.wants_csv():
        from kmeans import insight

        return media.csv_response(insight.profile_csv(doc))
    return media.json(doc)


def get_model_centers(model_id: str) -> Any:
    """The cluster centers."""
    values, columns = service().model_centers(model_id)
    if media.wants_csv():
        return media.csv_response(csvio.format_table(values, columns))
    return media.json({"model_id": model_id, "columns": columns, "centers": values.tolist()})


@media.inline_small_json
def predict_with_model(
    model_id: str,
    file: Any = None,
    distances: bool = False,
    all_distances: bool = False,
    anomalies: bool = False,
    threshold: float | None = None,
    version: int | None = None,
    delimiter: str | None = None,
    decimal: str = ".",
    na_values: str | None = None,
) -> Any:
    """Labels for points sent as a multipart file, raw CSV or JSON (with distances and
    anomaly flags when asked for; with the centers of ``version`` when given)."""
    svc = service()
    source = media.upload(file)[0] if file is not None else None if media.is_json() else media.raw_body()
    options = media.csv_options(delimiter, decimal, na_values, source=file)
    data = media.json_body()["data"] if source is None else None
    scoring_options = {
        "distances": distances,
        "all_distances": all_distances,
        "anomalies": anomalies,
        "threshold": threshold,
        "version": version,
    }
    if not any(v not in (None, False) for v in scoring_options.values()):
        result = svc.predict(model_id, data, source, options)
        return media.labels(result["labels"], model_id, ids=result["ids"], unknown=result["unknown_categories"],
                            names=result["label_names"])
    result = svc.score(model_id, data, source, options, **scoring_options)
    unknown = result["unknown_categories"]
    if set(result) == {"labels", "ids", "unknown_categories"}:  # label_names go by csv_bytes below
        return media.labels(result["labels"], model_id, ids=result["ids"], unknown=unknown)
    if media.wants_csv():
        return media.csv_response(scoring.csv_bytes(result), **media.unknown_header(unknown))
    return media.json(scoring.json_body(model_id, result))


def pause_model(model_id: str) -> Any:
    """Pause a queued or running fit (its centers are checkpointed, its process freed)."""
    return media.json(service().pause_model(model_id))


def resume_model(model_id: str) -> Any:
    """Queue a paused fit again, to go on from its checkpoint."""
    return media.json(service().resume_model(model_id), 202, Location=f"/kmeans/models/{model_id}")


def copy_model(model_id: str, body: dict | None = None) -> Any:
    """Refit a model's dataset with its params and the overrides given; 202 with the new model."""
    body = body or {}
    model = service().copy_model(
        model_id, body.get("params"), body.get("dataset_id"), body.get("time_limit"), body.get("callback_url"),
        unset=body.get("unset", ()),
    )
    return media.json(model, 202, Location=f"/kmeans/models/{model['id']}")
