#!/usr/bin/env bash
# A table as a data team exports it, end to end with curl: customers.csv is ';'-separated
# with decimal commas, has an id column, two text columns (categories) and empty or NA
# cells. The new customers come with their columns in another order, an extra column, a
# region the model has never seen, and a gap.
# KMEANS_URL is the server (default http://localhost:8080); KMEANS_TOKEN a token, if it needs one.
set -euo pipefail
cd "$(dirname "$0")"
URL="${KMEANS_URL:-http://localhost:8080}"
AUTH=()
if [ -n "${KMEANS_TOKEN:-}" ]; then AUTH=(-H "Authorization: Bearer $KMEANS_TOKEN"); fi
call() { curl -sS --fail-with-body "${AUTH[@]}" "$@"; }
field() { python3 -c "import json, sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

echo "== upload customers.csv (the delimiter is detected; decimal commas are asked for)"
dataset=$(call -X POST "$URL/kmeans/datasets?name=customers&decimal=,&id_column=customer_id" \
    -H "Content-Type: text/csv" --data-binary @customers.csv)
echo "$dataset"
dataset_id=$(echo "$dataset" | field id)

echo "== its columns: type, missing, distinct, min/max/mean/median/stddev, top categories"
call "$URL/kmeans/datasets/$dataset_id/columns"
echo

echo "== fit 2 clusters on every column but the id (gaps filled with the column mean)"
model_id=$(call -X POST "$URL/kmeans/models" -H "Content-Type: application/json" \
    -d "{\"dataset_id\": \"$dataset_id\", \"params\": {\"n_clusters\": 2, \"random_state\": 0, \"standardize\": true, \"missing\": \"mean\"}}" \
    | field id)
status=queued
for _ in $(seq 1 300); do  # at most 60 s
    status=$(call "$URL/kmeans/models/$model_id" | field status)
    if [ "$status" != queued ] && [ "$status" != running ]; then break; fi
    sleep 0.2
done
echo "$model_id $status"
[ "$status" = succeeded ]

echo "== centers in original units; each category column holds its share in the cluster"
call "$URL/kmeans/models/$model_id/centers" -H "Accept: text/csv"

echo "== training labels, with the customer ids"
call "$URL/kmeans/models/$model_id/labels" -H "Accept: text/csv" | sed -n 1,5p

echo "== new customers: columns matched by name, ids echoed, unseen categories counted"
call -X POST "$URL/kmeans/models/$model_id/predictions?decimal=," \
    -H "Content-Type: text/csv" --data-binary @customers_new.csv
echo
