"""Mount kmeans-service into a Flask application: the whole API under /kmeans, served by
connexion's FlaskApp, beside the routes of a Flask application of your own.

    python examples/flask_mount.py [--port 8080] [--data-dir kmeans-data]

then ``curl localhost:8080/shop/status`` (the Flask app's own route) and
``curl localhost:8080/kmeans/ping`` (the API). Under gunicorn, serve ``create_app()`` with
``-k uvicorn_worker.UvicornWorker`` as for ``server:app``.

connexion 3 apps are ASGI apps: the API's checks (tokens, limits, validation) are ASGI
middleware around the Flask app, so it is the connexion app (not ``flask_app.wsgi_app``) that
the server runs. Your application's routes join it as a Blueprint, registered on the Flask
app connexion made (``app.app``); they are plain Flask views, outside the API's spec, so the
API's token check does not cover them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import connexion
import flask

# server.py (build_app) sits at the repository root beside api.yaml; it is not an installed module.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kmeans.config import Settings  # noqa: E402
from server import build_app  # noqa: E402

# The existing application: its routes, as a Flask Blueprint (how Flask applications are split up).
shop = flask.Blueprint("shop", __name__, url_prefix="/shop")


@shop.get("/status")
def status() -> flask.Response:
    """A route of the Flask application itself, beside the API."""
    return flask.jsonify(app="shop", served_by="flask", kmeans_api="/kmeans", kmeans_docs="/kmeans/ui/")


def create_app(settings: Settings | None = None) -> connexion.FlaskApp:
    """The kmeans API (FlaskApp) with the shop's Blueprint mounted on its Flask app."""
    app = build_app(settings, app_class=connexion.FlaskApp)
    app.app.register_blueprint(shop)  # app.app: the flask.Flask that serves the API's operations
    return app


def main() -> None:
    """Serve the combined application with uvicorn on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--data-dir", help="where state is kept (default $KMEANS_DATA_DIR or ./kmeans-data)")
    args = parser.parse_args()
    uvicorn.run(create_app(Settings.from_env(data_dir=args.data_dir)), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
