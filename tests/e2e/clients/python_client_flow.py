"""The full flow with the client openapi-python-client generated from a running server's spec.

    python python_client_flow.py GENERATED_DIR BASE_URL

GENERATED_DIR holds the package ``kmeans_service_client`` exactly as generated (no config, no
edits); BASE_URL is the server's origin. Prints what the client got back, as JSON.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[2] / "examples"


def main(generated: str, url: str) -> dict:
    """Run the flow against ``url``; returns what each call answered."""
    sys.path.insert(0, generated)
    from kmeans_service_client import Client
    from kmeans_service_client.api.classic import fit, predict, upload
    from kmeans_service_client.api.datasets import create_dataset
    from kmeans_service_client.api.models import (
        create_model,
        get_model,
        get_model_centers,
        get_model_labels,
        get_model_plot,
        predict_with_model,
    )
    from kmeans_service_client.models import (
        DatasetInput,
        FitRequest,
        ModelInput,
        ModelParams,
        ModelParamsAlgorithm,
        ModelParamsMethod,
        PointsInput,
        PredictBody,
        UploadBody,
    )
    from kmeans_service_client.types import File

    data = json.loads((HERE / "flow_data.json").read_text())
    client = Client(base_url=f"{url}/kmeans", raise_on_unexpected_status=True, timeout=60)
    dataset = create_dataset.sync(client=client, body=DatasetInput(data=data["points"], columns=data["columns"],
                                                                   name="blobs"))
    seen: dict = {"dataset": {"id": dataset.id, "rows": dataset.rows, "columns": dataset.columns}, "fits": {}}
    for name, options in data["fits"].items():
        params = ModelParams(n_clusters=data["n_clusters"], random_state=0, method=ModelParamsMethod(options["method"]))
        if "algorithm" in options:
            params.algorithm = ModelParamsAlgorithm(options["algorithm"])
        model = create_model.sync(client=client, body=ModelInput(dataset_id=dataset.id, params=params))
        deadline = time.monotonic() + 60
        while model.status.value in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
            model = get_model.sync(model.id, client=client)
        plot = get_model_plot.sync(model.id, client=client)
        seen["fits"][name] = {
            "id": model.id,
            "status": model.status.value,
            "method": model.params.method.value,
            "labels": get_model_labels.sync(model.id, client=client).labels,
            "centers": get_model_centers.sync(model.id, client=client).centers,
            "predicted": predict_with_model.sync(model.id, client=client,
                                                 body=PointsInput(data=data["predict"])).labels,
            "plot_sha256": hashlib.sha256(plot.payload.read()).hexdigest(),
        }

    with open(EXAMPLES / "model.csv", "rb") as handle:
        job = upload.sync(client=client, body=UploadBody(file=File(payload=handle, file_name="model.csv",
                                                                    mime_type="text/csv")))
    labels = fit.sync(client=client, body=FitRequest(job_id=job.job_id,
                                                     model_params=ModelParams(n_clusters=data["classic_n_clusters"])))
    with open(EXAMPLES / "predict.csv", "rb") as handle:
        points = File(payload=handle, file_name="predict.csv", mime_type="text/csv")
        predicted = predict.sync(client=client, body=PredictBody(job_id=job.job_id, file=points))
    seen["classic"] = {"job_id": job.job_id, "labels": labels, "predicted": predicted}
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
