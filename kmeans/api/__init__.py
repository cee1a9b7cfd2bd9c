"""HTTP handlers, one module per resource; connexion routes to them by operationId."""

from __future__ import annotations

from connexion import context

from kmeans.service import KMeansService

SERVICE = "kmeans.service"  # scope key: the app's service (put there by AccessMiddleware)


def service() -> KMeansService:
    """The service instance of the app handling this request."""
    return context.scope[SERVICE]
