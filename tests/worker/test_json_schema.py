"""``closed_objects``: what a schema that omits ``additionalProperties`` is enforced as."""

from __future__ import annotations

from opta_lmx.worker.json_schema import closed_objects


def test_objects_with_properties_are_closed_at_every_depth() -> None:
    schema = {
        "type": "object",
        "properties": {
            "point": {"type": "object", "properties": {"x": {"type": "number"}}},
            "tags": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
            "either": {"anyOf": [{"type": "object", "properties": {"a": {}}}, {"type": "null"}]},
        },
        "$defs": {"Item": {"type": "object", "properties": {"id": {"type": "integer"}}}},
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["point"]["additionalProperties"] is False
    assert closed["properties"]["tags"]["items"]["additionalProperties"] is False
    assert closed["properties"]["either"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["either"]["anyOf"][1]
    assert closed["$defs"]["Item"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the caller's schema is left as it was


def test_what_the_schema_says_is_kept() -> None:
    assert closed_objects({"type": "object"}) == {"type": "object"}  # any object
    assert closed_objects({"properties": {"a": {}}, "additionalProperties": True})["additionalProperties"] is True
    extra = closed_objects({"properties": {"a": {}}, "additionalProperties": {"type": "object", "properties": {"b": {}}}})
    assert extra["additionalProperties"]["additionalProperties"] is False
    assert "additionalProperties" not in closed_objects({"properties": {}, "patternProperties": {"^x": {}}})
    assert closed_objects(True) is True
