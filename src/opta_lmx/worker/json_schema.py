"""JSON schemas as the grammars enforce them.

An object schema that lists its ``properties`` but says nothing of ``additionalProperties`` is
enforced as if it said ``false``: what Pydantic writes (it never writes the key) then means "these
keys", as llama.cpp's converter and XGrammar's strict mode read it. Read literally, it allows any
other key, and a small model unsure of what comes next fills an object with invented keys until
``max_tokens``. An explicit ``"additionalProperties": true`` (or a schema) is kept, and so is an
object with no ``properties`` at all (``{"type": "object"}``: any object).
"""

from __future__ import annotations

from typing import Any

# Keywords whose value is a schema, a list of schemas, or a map of names to schemas.
_ONE = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames", "unevaluatedItems")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def closed_objects(schema: Any) -> Any:
    """A copy of ``schema`` with ``additionalProperties: false`` where it lists properties and
    leaves the key out, at every depth."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _ONE:
        if key in out:
            out[key] = closed_objects(out[key])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = closed_objects(out["additionalProperties"])
    for key in _MANY:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(item) for item in out[key]]
    for key in _MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(value) for name, value in out[key].items()}
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out
