"""The whole flow with kmeans.client, the project's Python SDK: upload a CSV file, fit in the
background, wait, read the result, label new points, and handle an error.

    python examples/sdk_flow.py [--url http://localhost:8080] [--token kms_…]

The token defaults to $KMEANS_TOKEN (the client reads it); a server without tokens needs none
from its own machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kmeans.client import KMeansClient, NotFound

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("KMEANS_URL", "http://localhost:8080"))
    parser.add_argument("--token", help="a bearer token (default: $KMEANS_TOKEN)")
    args = parser.parse_args()

    with KMeansClient(args.url, timeout=30, token=args.token) as km:
        print(f"service {km.ping()['status']}")
        me = km.whoami()  # Unauthorized (401) without a valid token on a server that has tokens
        print(f"working as {me['role']} in {me['project'] or 'every project'}")

        # A path is streamed in chunks; progress(sent, total) is called after each one.
        dataset = km.create_dataset(HERE / "model.csv", name="points", progress=lambda sent, total: None)
        print(f"dataset {dataset['id']}: {dataset['rows']} rows, columns {dataset['columns']}")

        model = km.create_model(dataset["id"], {"n_clusters": 2, "random_state": 0})
        model = km.wait_for_model(model["id"], timeout=60, poll=0.1)
        if model["status"] != "succeeded":
            print(f"fit ended as {model['status']}: {model['error']}", file=sys.stderr)
            return 1
        print(f"model {model['id']}: inertia {model['inertia']:.2f}, cluster sizes {model['cluster_sizes']}")

        print(f"labels {km.labels(model['id'])}")
        centers = km.centers(model["id"])
        print(f"centers {centers['centers']} (columns {centers['columns']})")
        print(f"predictions for predict.csv: {km.predict(model['id'], HERE / 'predict.csv')}")
        print(f"predictions for (0, 0) and (12, 3): {km.predict(model['id'], [[0, 0], [12, 3]])}")

        try:
            km.get_dataset("ds_0000000000000000")
        except NotFound as exc:  # every error carries .status, .detail and the .problem document
            print(f"as expected, {exc.status}: {exc.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
