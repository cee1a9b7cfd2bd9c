"""Health check."""

from __future__ import annotations

from kmeans import __version__
from kmeans.api import media, service


def ping() -> tuple:
    """Answer when the data directory's database can be read."""
    service().store.check()
    return media.json({"status": "ok", "version": __version__})
