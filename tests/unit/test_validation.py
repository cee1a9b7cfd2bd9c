"""The JSON body validator's shortcut for rows of numbers decides exactly as jsonschema does."""

from __future__ import annotations

import pytest
import yaml
from connexion.json_schema import Draft4RequestValidator
from jsonschema import Draft4Validator

from kmeans.api.validation import FastRequestValidator, all_valid
from tests.conftest import ROOT

SCHEMAS = yaml.safe_load((ROOT / "api.yaml").read_text())["components"]["schemas"]


def resolved(schema: object) -> object:
    """``schema`` with its ``$ref``s replaced by what they name, as connexion validates it."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return resolved(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]])
        return {key: resolved(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [resolved(value) for value in schema]
    return schema


POINTS = resolved(SCHEMAS["PointsInput"])
BOUNDED = {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "array", "items": {"type": "number"}}}
BODIES = [
    {"data": [[0.5, 1, -2e300]]},
    {"data": [[1, 2], [3, 4.5]] * 50},
    {"data": [[1, 2], [3, "4"]]},
    {"data": [[1, True]]},
    {"data": [[1, None]]},
    {"data": [{"x": 1, "y": None, "kind": "gold"}, {"y": 2.5}]},
    {"data": [{}]},
    {"data": [{"x": [1]}]},
    {"data": [{"x": {"y": 1}}]},
    {"data": [[1, "x" * 10001]]},
    {"data": [["A1", "gold", 1.5, None, False]]},
    {"data": [[1, [2]]]},
    {"data": [[]]},
    {"data": []},
    {"data": [1, 2]},
    {"data": [[1], 2]},
    {"data": "1,2"},
    {"data": [[1, 2]], "extra": 1},
    {},
]


def errors(validator_class: type, schema: dict, body: object) -> list[tuple[str, list]]:
    validator = validator_class(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
    return sorted((error.message, list(error.absolute_path)) for error in validator.iter_errors(body))


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("schema", [POINTS, {"type": "object", "properties": {"data": BOUNDED}}])
def test_the_fast_validator_finds_what_jsonschema_finds(schema: dict, body: object):
    assert errors(FastRequestValidator, schema, body) == errors(Draft4RequestValidator, schema, body)


def test_all_valid_is_true_only_for_what_it_can_decide():
    rows = POINTS["properties"]["data"]
    assert all_valid(rows, [[1.0, 2], [3, 4]])
    assert all_valid(rows, [[1.0, True, None, "gold"], {"x": 1, "kind": None}])
    assert not all_valid(rows, [[1.0, [2]]])  # a list is not a cell
    assert not all_valid(rows, [[1.0, "x" * 10001]])  # maxLength
    assert not all_valid(rows, [[]])  # minItems of a row
    assert not all_valid(BOUNDED, [[1.0, True]])  # bool is not a number
    assert not all_valid(rows, [])  # minItems
    assert not all_valid(BOUNDED, [[1], [2], [3], [4]])  # maxItems
    assert not all_valid({"type": "array", "items": {"type": "string"}}, ["a"])  # a shape left to jsonschema
    assert not all_valid({**rows, "nullable": True}, [[1.0]])
