"""HTTP handlers, one module per resource; connexion routes to them by operationId."""

from __future__ import annotations

import flask

from kmeans.service import KMeansService


def service() -> KMeansService:
    """The service instance of the app handling this request."""
    return flask.current_app.extensions["kmeans"]
