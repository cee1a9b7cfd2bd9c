"""The contract itself: api.yaml is valid OpenAPI, every operation is documented the same way,
and every operationId names a handler that exists."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "api.yaml").read_text())
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
OPERATIONS = [
    pytest.param(path, method, operation, id=f"{method.upper()} {path}")
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
    if method in METHODS
]


def resolve(ref: str) -> dict:
    node: dict = SPEC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def handler_path(operation: dict) -> str:
    """The dotted path connexion resolves an operation to (router controller + operationId)."""
    controller = operation.get("x-openapi-router-controller")
    return f"{controller}.{operation['operationId']}" if controller else operation["operationId"]


def test_api_yaml_is_a_valid_openapi_document():
    validate(SPEC)  # raises OpenAPIValidationError with the path of the first problem


def test_operation_ids_are_unique():
    ids = [operation["operationId"] for _, _, operation in (p.values for p in OPERATIONS)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_operation_has_tags_that_are_declared():
    declared = {tag["name"] for tag in SPEC["tags"]}
    for path, method, operation in (p.values for p in OPERATIONS):
        assert operation.get("tags"), f"{method.upper()} {path} has no tags"
        assert set(operation["tags"]) <= declared, f"{method.upper()} {path}: undeclared tags"


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS)
def test_operation_is_documented(path: str, method: str, operation: dict):
    assert operation.get("operationId"), "no operationId"
    assert operation.get("summary", "").strip(), "no summary"
    assert len(operation["summary"]) <= 80, "the summary is a line, not a paragraph"
    client_errors = {
        status: response.get("$ref") and resolve(response["$ref"]) or response
        for status, response in operation["responses"].items()
        if str(status).startswith("4")
    }
    assert client_errors, "no 4xx response"
    for status, response in client_errors.items():
        assert "application/problem+json" in response.get("content", {}), f"{status} is not problem+json"


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS)
def test_operation_id_resolves_to_a_handler(path: str, method: str, operation: dict):
    dotted = handler_path(operation)
    module_name, _, function_name = dotted.rpartition(".")
    assert module_name.startswith("kmeans.api."), f"{dotted} is not in kmeans.api.<module>"
    module = importlib.import_module(module_name)
    assert callable(getattr(module, function_name, None)), f"{module_name} has no function {function_name}"


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS)
def test_path_parameters_are_declared(path: str, method: str, operation: dict):
    declared = {
        (p.get("$ref") and resolve(p["$ref"]) or p)["name"]
        for p in SPEC["paths"][path].get("parameters", []) + operation.get("parameters", [])
        if (p.get("$ref") and resolve(p["$ref"]) or p)["in"] == "path"
    }
    used = {part[1:-1] for part in path.split("/") if part.startswith("{")}
    assert used == declared


def test_links_name_existing_operations():
    ids = {operation["operationId"] for _, _, operation in (p.values for p in OPERATIONS)}
    for path, method, operation in (p.values for p in OPERATIONS):
        for status, response in operation["responses"].items():
            for name, link in response.get("links", {}).items():
                assert link["operationId"] in ids, f"{method.upper()} {path} {status} link {name}"


def test_api_yaml_has_no_duplicate_keys():
    """PyYAML keeps the last of two equal keys silently; generators (ruamel) refuse the file."""

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        keys = [loader.construct_object(key) for key, _ in node.value]
        duplicates = {k for k in keys if keys.count(k) > 1}
        where = f"api.yaml line {node.start_mark.line + 1}"
        assert not duplicates, f"{where}: duplicate keys {sorted(map(str, duplicates))}"
        return yaml.SafeLoader.construct_mapping(loader, node)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    yaml.load((ROOT / "api.yaml").read_text(), Strict)  # a SafeLoader subclass: safe


def _responses() -> list[tuple[str, str, str, dict]]:
    return [(path, method, status, response) for param in OPERATIONS
            for path, method, operation in [param.values]
            for status, response in operation.get("responses", {}).items()]


@pytest.mark.parametrize("path,method,status,response", _responses())
def test_every_picture_is_also_offered_as_bytes(path: str, method: str, status: str, response: dict):
    # openapi-python-client drops an answer it cannot read (image/png); application/octet-stream
    # is the alternative it reads, and the handlers send the same PNG under that name.
    content = response.get("content", {})
    if "image/png" in content:
        assert content.get("application/octet-stream") == content["image/png"], f"{method.upper()} {path} {status}"
