# kmeans-service, production: gunicorn with uvicorn workers serving the connexion app.
FROM python:3.11-slim

# KMEANS_AUTH=required: every request needs a bearer token, even before the first exists.
# Make the first admin token with: docker exec <container> python server.py create-token --role admin
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KMEANS_DATA_DIR=/data \
    KMEANS_AUTH=required

WORKDIR /app
# requirements.txt installs this project (editable, from pyproject.toml) with its dependencies.
COPY requirements.txt pyproject.toml ./
COPY kmeans ./kmeans
RUN pip install --no-cache-dir -r requirements.txt

COPY api.yaml server.py ./

RUN useradd --system --uid 10001 --no-create-home kmeans \
    && mkdir -p /data && chown kmeans /data
USER kmeans

# Datasets, models and the SQLite database live here; mount a volume to keep them.
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/kmeans/ping', timeout=4).status != 200)"]

# Inside the container the server must listen on all interfaces for the port mapping.
CMD ["gunicorn", "--worker-class", "uvicorn_worker.UvicornWorker", "--workers", "2", "--bind", "0.0.0.0:8080", "--graceful-timeout", "30", "server:app"]
