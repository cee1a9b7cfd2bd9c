"""/datasets: numeric tables to cluster."""

from __future__ import annotations

from typing import Any

from kmeans import csvio
from kmeans.api import media, service


def create_dataset(
    name: str | None = None,
    file: Any = None,
    project: str | None = None,
    delimiter: str | None = None,
    decimal: str = ".",
    na_values: str | None = None,
    id_column: str | None = None,
) -> Any:
    """Create a dataset from a multipart file, a raw CSV body or JSON rows."""
    if file is not None:
        content, filename = media.upload(file)
        options = media.csv_options(delimiter, decimal, na_values, source=file)
        record = service().create_dataset_from_stream(content, name or filename, project, options, id_column)
    elif media.is_json():
        body = media.json_body()
        rows, columns = body["data"], body.get("columns")
        record = service().create_dataset_from_rows(rows, columns, name or body.get("name"), project, id_column)
    else:
        options = media.csv_options(delimiter, decimal, na_values)
        record = service().create_dataset_from_stream(media.raw_body(), name, project, options, id_column)
    return media.json(record, 201, Location=media.location(record["id"]))


def list_datasets(offset: int = 0, limit: int = 100, project: str | None = None) -> Any:
    """A page of datasets, newest first."""
    return media.json(service().list_datasets(offset, limit, project))


def get_dataset(dataset_id: str) -> Any:
    """One dataset."""
    return media.json(service().get_dataset(dataset_id))


def delete_dataset(dataset_id: str) -> Any:
    """Delete a dataset (409 while a fit on it is still running)."""
    service().delete_dataset(dataset_id)
    return media.no_content()


def get_dataset_rows(dataset_id: str, offset: int = 0, limit: int = 100) -> Any:
    """A page of a dataset's rows, as JSON or CSV."""
    rows, record = service().dataset_rows(dataset_id, offset, limit)
    if media.wants_csv():
        return media.csv_response(csvio.format_table(rows, record["columns"]))
    page = {"offset": offset, "limit": limit, "total": record["rows"], "columns": record["columns"]}
    return media.json({"items": rows, **page})


def get_dataset_columns(dataset_id: str) -> Any:
    """Per column statistics (as BigQuery's ML.FEATURE_INFO)."""
    return media.json(service().dataset_columns(dataset_id))
