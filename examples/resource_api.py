"""The resource API from Python: create a dataset from JSON, fit in the background, read
the result, and label new points.

    python examples/resource_api.py [--url http://localhost:8080]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import httpx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("KMEANS_URL", "http://localhost:8080"))
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for the fit")
    args = parser.parse_args()

    with httpx.Client(base_url=f"{args.url}/kmeans", timeout=30) as api:
        points = [[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]]
        created = api.post("/datasets", json={"name": "points", "columns": ["x", "y"], "data": points})
        created.raise_for_status()
        dataset = created.json()
        print(f"dataset {dataset['id']}: {dataset['rows']} rows, columns {dataset['columns']}")

        queued = api.post("/models", json={"dataset_id": dataset["id"], "params": {"n_clusters": 2, "random_state": 0}})
        queued.raise_for_status()
        model_url = queued.headers["Location"].removeprefix("/kmeans")
        deadline = time.monotonic() + args.timeout
        model = queued.json()
        while model["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.05)
            model = api.get(model_url).json()
        if model["status"] != "succeeded":
            print(f"fit ended as {model['status']}: {model.get('error')}", file=sys.stderr)
            return 1
        print(f"model {model['id']}: inertia {model['inertia']:.2f}, cluster sizes {model['cluster_sizes']}")

        centers = api.get(f"{model_url}/centers").json()
        for label, center in enumerate(centers["centers"]):
            print(f"  center {label}: {dict(zip(centers['columns'], center, strict=True))}")
        labels = api.get(f"{model_url}/labels", headers={"Accept": "text/csv"}).text.split()
        print(f"training labels: {' '.join(labels)}")

        predicted = api.post(f"{model_url}/predictions", json={"data": [[0, 0], [12, 3]]})
        predicted.raise_for_status()
        print(f"predicted labels for (0, 0) and (12, 3): {predicted.json()['labels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
