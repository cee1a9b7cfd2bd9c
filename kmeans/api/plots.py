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
    values, codes = store.dataset_arrays(model["dataset_id"])
    labels = store.load_array(store.labels_path(model_id), mmap=True)
    rows = plots.sample_rows(len(values))
    rows = rows[labels[rows] >= 0]  # rows left out of the fit (a missing value) have no cluster
    pre = model["preprocessing"]
    # The picture fills a sample's missing values with its own means (drop_rows models drop none here).
    features, _, _ = prep.dataset_design(values[rows], codes[rows] if codes is not None else None,
                                         {**pre, "missing": "mean"})
    space = None
    if pre.get("distance") == "cosine":
        # Directions: draw the rows as the model sees them (normalised) with its own centers.
        features = prep.transform(features, pre)
        centers = svc.fitted_centers(model)
        columns = [f"{c} (normalised)" for c in columns]
        space = "normalised"
    elif pre.get("scale") is not None and features.shape[1] > 2:
        # Principal components of the original units follow the widest column alone (proline
        # in the wine data: 100% of the variance); a standardized model's own space shows what it split.
        features = prep.transform(features, pre)
        centers = svc.fitted_centers(model)
        space = "standardized"
    png = plots.model_png(model, features, labels[rows], centers, columns, space)
    return media.png_response(png)


def get_model_profile_plot(model_id: str) -> Any:
    """The profile's standardized differences as a heatmap, clusters x features (PNG)."""
    return media.png_response(plots.profile_png(service().model_profile(model_id)))
