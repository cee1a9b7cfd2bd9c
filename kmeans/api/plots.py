"""Pictures: GET /models/{id}/plot.png (the sweep's is in kmeans.api.sweeps)."""

from __future__ import annotations

from typing import Any

from kmeans import plots, prep
from kmeans.api import media, service
from kmeans.errors import Conflict


def get_model_plot(model_id: str) -> Any:
    """A sample of the training rows coloured by cluster, with the centers (PNG)."""
    svc = service()
    centers, columns = svc.model_centers(model_id)  # 404 / 409 unless fitted
    model = svc.get_model(model_id)
    store = svc.store
    if store.get_dataset(model["dataset_id"]) is None or not store.labels_path(model_id).exists():
        raise Conflict(
            f"the training data of model {model_id} (dataset {model['dataset_id']}) is gone"
            " (deleted, or the model was imported), so there is nothing to draw"
        )
    values = store.load_array(store.dataset_path(model["dataset_id"]), mmap=True)
    labels = store.load_array(store.labels_path(model_id), mmap=True)
    rows = plots.sample_rows(len(values))
    pre = model.get("preprocessing") or prep.plan(model["params"], columns)
    features = prep.select(values[rows], pre)
    if pre.get("distance") == "cosine":
        # Directions: draw the rows as the model sees them (normalised) with its own centers.
        features = prep.transform(features, pre)
        centers = svc.fitted_centers(model)
        columns = [f"{c} (normalised)" for c in columns]
    png = plots.model_png(model, features, labels[rows], centers, columns)
    return media.png_response(png)
