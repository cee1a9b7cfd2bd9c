"""The full flow with the client openapi-generator (``-g python``) generated from a running server's spec.

    python openapi_generator_flow.py GENERATED_DIR BASE_URL

GENERATED_DIR holds the package ``openapi_client`` exactly as generated (no config, no edits);
the client's default host is the spec's first server, which the server filled in with its own
address, so BASE_URL is only compared with it. Prints what the client got back, as JSON.
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
    """Run the flow against the generated client's default host; returns what each call answered."""
    sys.path.insert(0, generated)
    import openapi_client
    from openapi_client import ClassicApi, DatasetsApi, ModelsApi
    from openapi_client.models import Cell, DatasetInput, FitRequest, ModelInput, ModelParams, PointsInput, Row

    def rows(values: list[list[float]]) -> list:
        """Rows of the generated anyOf wrappers (its ``from_dict`` cannot take plain numbers as ``Cell``s)."""
        return [Row([Cell(value) for value in row]) for row in values]

    data = json.loads((HERE / "flow_data.json").read_text())
    configuration = openapi_client.Configuration()  # its host: the spec's first server, as served
    with openapi_client.ApiClient(configuration) as api_client:
        datasets, models, classic = DatasetsApi(api_client), ModelsApi(api_client), ClassicApi(api_client)
        body = DatasetInput(data=rows(data["points"]), columns=data["columns"], name="blobs")
        dataset = datasets.create_dataset(body)
        seen: dict = {"host": configuration.host, "fits": {},
                      "dataset": {"id": dataset.id, "rows": dataset.rows, "columns": dataset.columns}}
        for name, options in data["fits"].items():
            params = ModelParams(n_clusters=data["n_clusters"], random_state=0, **options)
            model = models.create_model(ModelInput(dataset_id=dataset.id, params=params))
            deadline = time.monotonic() + 60
            while model.status in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.1)
                model = models.get_model(model.id)
            points = PointsInput(data=rows(data["predict"]))
            seen["fits"][name] = {
                "id": model.id,
            "status": model.status.value,
                "method": model.params.method,
                "labels": models.get_model_labels(model.id).labels,
                "centers": models.get_model_centers(model.id).centers,
                "predicted": models.predict_with_model(model.id, points).labels,
                "plot_sha256": hashlib.sha256(models.get_model_plot(model.id)).hexdigest(),
            }

        job = classic.upload(("model.csv", (EXAMPLES / "model.csv").read_bytes()))
        # The generator asks for JSON whenever an operation offers it but types the answer by the first
        # media type (the classic CSV): ask for that CSV, as the original example does (see README).
        csv = {"Accept": "text/csv"}
        request = FitRequest(job_id=job.job_id, model_params=ModelParams(n_clusters=data["classic_n_clusters"]))
        labels = classic.fit(request, _headers=csv)
        predicted = classic.predict(job.job_id, ("predict.csv", (EXAMPLES / "predict.csv").read_bytes()), _headers=csv)
        seen["classic"] = {"job_id": job.job_id, "labels": labels, "predicted": predicted}
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), default=str))
