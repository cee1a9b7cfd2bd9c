"""/models/{id}/evaluations and /models/{id}/comparisons: how a model holds on a dataset, and
how two models agree on one."""

from __future__ import annotations

from typing import Any

from connexion import context

from kmeans.api import media, service
from kmeans.api.models import EVENT_STREAM_SECONDS
from kmeans.api.validation import disconnected


def create_evaluation(model_id: str, body: dict) -> Any:
    """Queue an evaluation of the model on a dataset; 202 with Location."""
    evaluation = service().create_evaluation(
        model_id, body["dataset_id"], body.get("label_column"), time_limit=body.get("time_limit")
    )
    return media.json(evaluation, 202, Location=media.location(evaluation["id"]))


def list_evaluations(model_id: str, offset: int = 0, limit: int = 100) -> Any:
    """A page of the model's evaluations, newest first."""
    return media.json(service().list_evaluations(model_id, offset, limit))


def get_evaluation(model_id: str, evaluation_id: str) -> Any:
    """One evaluation: status, and the result once it has succeeded."""
    return media.json(service().get_evaluation(model_id, evaluation_id))


def cancel_evaluation(model_id: str, evaluation_id: str) -> Any:
    """Cancel a queued or running evaluation."""
    return media.json(service().cancel_evaluation(model_id, evaluation_id))


def delete_evaluation(model_id: str, evaluation_id: str) -> Any:
    """Delete an evaluation (cancelled first if it still runs)."""
    service().delete_evaluation(model_id, evaluation_id)
    return media.no_content()


def get_evaluation_events(model_id: str, evaluation_id: str) -> Any:
    """Status and progress as Server-Sent Events until the evaluation ends."""
    last = media.header("Last-Event-ID") or ""
    gone = disconnected(context.scope)
    changes = service().evaluation_events(
        model_id, evaluation_id, int(last) if last.isdigit() else None, EVENT_STREAM_SECONDS, gone
    )
    return media.event_stream(changes, "evaluation")


def create_comparison(model_id: str, body: dict) -> Any:
    """Compare two fitted models on a dataset (synchronous)."""
    return media.json(service().compare_models(model_id, body["other_model_id"], body.get("dataset_id")))
