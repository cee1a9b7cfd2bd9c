"""A client generated from api.yaml with openapi-python-client, and the whole flow with it:
a dataset from a CSV file (multipart), a fit, its labels and centers, and predictions.

    python examples/generated_client.py [--url http://localhost:8080] [--token kms_...] [--out DIR]

With a token (--token, or KMEANS_TOKEN) it uses the generated ``AuthenticatedClient``, which sends
it as api.yaml's bearerAuth scheme says (``Authorization: Bearer <token>``); without one, a plain
``Client``, as for a local server that has no tokens yet. The flow needs a contributor token. An
error answer (say 401 for a missing or revoked token) stops it with the server's problem.

The generation is one command (run here into a temporary folder, or --out):

    openapi-python-client generate --path api.yaml --config examples/openapi-python-client.yaml \\
        --meta none --output-path kmeans_api_client

Nothing in the generated code is edited by hand: what it needs is in api.yaml.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "kmeans_api_client"


class ProblemAnswer(Exception):
    """The server answered with an RFC 7807 problem (the generated functions return it, not raise it)."""

    def __init__(self, problem) -> None:
        self.problem = problem
        self.status = problem.status
        super().__init__(f"error {problem.status} {problem.title}: {problem.detail}")


def ok(answer):
    """``answer``, unless the server sent a problem instead: then raise it as ``ProblemAnswer``."""
    from kmeans_api_client.models import Problem

    if isinstance(answer, Problem):
        raise ProblemAnswer(answer)
    return answer


def make_client(url: str, token: str | None = None):
    """``AuthenticatedClient`` with a bearer token, or a plain ``Client`` for an open server."""
    api = importlib.import_module(PACKAGE)
    options = {"base_url": f"{url}/kmeans", "raise_on_unexpected_status": True, "timeout": 30}
    return api.AuthenticatedClient(token=token, **options) if token else api.Client(**options)


def generate(out_dir: Path) -> None:
    """Generate the client package into ``out_dir / PACKAGE``."""
    cmd = [
        "openapi-python-client", "generate",
        "--path", str(ROOT / "api.yaml"),
        "--config", str(ROOT / "examples" / "openapi-python-client.yaml"),
        "--meta", "none",
        "--output-path", str(out_dir / PACKAGE),
        "--overwrite",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def flow(url: str, timeout: float = 60, token: str | None = None) -> dict:
    """The flow with the generated client (already importable); returns what it saw."""
    from kmeans_api_client.api.access import whoami
    from kmeans_api_client.api.datasets import create_dataset
    from kmeans_api_client.api.health import ping
    from kmeans_api_client.api.models import (
        create_model,
        get_model,
        get_model_centers,
        get_model_labels,
        predict_with_model,
    )
    from kmeans_api_client.models import CreateDatasetFilesBody, ModelInput, ModelParams, ModelStatus, PointsInput
    from kmeans_api_client.types import File

    client = make_client(url, token)
    print(f"service {ok(ping.sync(client=client)).status.value}")  # the one operation without security
    me = ok(whoami.sync(client=client))
    where = f" in project {me.project}" if me.project else ""
    print(f"as {me.role.value}{where}" + (" (open server, no token needed)" if me.open_ else ""))

    with open(ROOT / "examples" / "model.csv", "rb") as handle:
        upload = CreateDatasetFilesBody(file=File(payload=handle, file_name="model.csv", mime_type="text/csv"))
        dataset = ok(create_dataset.sync(client=client, body=upload, name="points"))
    print(f"dataset {dataset.id}: {dataset.rows} rows, columns {dataset.columns}")

    params = ModelParams(n_clusters=2, random_state=0)
    model = ok(create_model.sync(client=client, body=ModelInput(dataset_id=dataset.id, params=params)))
    deadline = time.monotonic() + timeout
    while model.status in (ModelStatus.QUEUED, ModelStatus.RUNNING) and time.monotonic() < deadline:
        time.sleep(0.1)
        model = ok(get_model.sync(model.id, client=client))
    print(f"model {model.id}: {model.status.value}, inertia {model.inertia}")

    labels = ok(get_model_labels.sync(model.id, client=client)).labels
    centers = ok(get_model_centers.sync(model.id, client=client))
    points = PointsInput(data=[[0, 0], [12, 3]])
    predicted = ok(predict_with_model.sync(model.id, client=client, body=points)).labels
    print(f"labels {labels}")
    print(f"centers {centers.centers} (columns {centers.columns})")
    print(f"predictions for (0, 0) and (12, 3): {predicted}")
    return {
        "dataset": dataset,
        "model": model,
        "labels": labels,
        "centers": centers,
        "predicted": predicted,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("KMEANS_URL", "http://localhost:8080"))
    parser.add_argument("--token", default=os.environ.get("KMEANS_TOKEN") or None,
                        help="bearer token (default: $KMEANS_TOKEN; none for an open local server)")
    parser.add_argument("--out", type=Path, help="where to generate the client (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        generate(out)
        sys.path.insert(0, str(out))
        try:
            seen = flow(args.url, token=args.token)
        except ProblemAnswer as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0 if seen["model"].status.value == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
