"""kmeans-service: an OpenAPI-first k-means clustering microservice."""

__version__ = "1.0.0"
