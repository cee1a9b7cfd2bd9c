#!/usr/bin/env bash
# The original example's three curl commands, unchanged but for the server address
# (KMEANS_URL, default http://localhost:8080) and curl's -sS --fail-with-body, so that a
# failure stops the script with the server's problem document.
set -euo pipefail
cd "$(dirname "$0")"
URL="${KMEANS_URL:-http://localhost:8080}"

echo "== upload model.csv"
curl -sS --fail-with-body -X POST "$URL/kmeans/upload" \
    -H "accept: application/json" \
    -H "Content-Type: multipart/form-data" \
    -F "file=@model.csv;type=text/csv"
echo

echo "== fit job 0 with 3 clusters: one label per row of model.csv"
curl -sS --fail-with-body -X POST "$URL/kmeans/fit" \
    -H "accept: text/csv" \
    -H "Content-Type: application/json" \
    -d "{\"job_id\":0,\"model_params\":{\"n_clusters\":3}}"

echo "== predict predict.csv with the model of job 0: one label per row"
curl -sS --fail-with-body -X POST "$URL/kmeans/predict" \
    -H "accept: text/csv" \
    -H "Content-Type: multipart/form-data" \
    -F "job_id=0" \
    -F "file=@predict.csv;type=text/csv"
