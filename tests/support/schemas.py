"""Random JSON schemas for constrained-decoding tests: nested objects, arrays, enums, bounded
strings and numbers. Every schema is finite (bounded lengths and sizes, no extra properties), so a
generation that follows it always ends."""

from __future__ import annotations

import random
from typing import Any


def random_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """An object schema (what ``response_format`` takes) with 1-4 required properties."""
    names = rng.sample(["id", "name", "tags", "score", "ok", "kind", "items", "note", "n", "meta"], rng.randint(1, 4))
    properties = {name: _value(rng, depth + 1) for name in names}
    required = [n for n in names if rng.random() < 0.8]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _value(rng: random.Random, depth: int) -> dict[str, Any]:
    kinds = ["string", "integer", "number", "boolean", "enum", "null", "anyOf"]
    if depth < 3:
        kinds += ["object", "array"]
    kind = rng.choice(kinds)
    if kind == "string":
        schema: dict[str, Any] = {"type": "string", "maxLength": rng.randint(1, 12)}
        if rng.random() < 0.5:
            schema["minLength"] = rng.randint(0, schema["maxLength"])
        return schema
    if kind == "integer":
        low = rng.randint(-1000, 1000)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 5000)}
    if kind == "number":
        return {"type": "number", "minimum": -10.0, "maximum": 10.0}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", 1, 2.5, True, None], rng.randint(1, 4))}
    if kind == "anyOf":
        return {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "string", "maxLength": 4}]}
    if kind == "object":
        return random_schema(rng, depth)
    return {"type": "array", "items": _value(rng, depth + 1), "minItems": rng.randint(0, 1), "maxItems": rng.randint(1, 3)}
