"""Request bodies decoded straight into msgspec Structs; a validation error names the field.

Every dialect decodes with ``decode_body``: unknown fields are refused as
``UnsupportedParameter`` (where a dialect's Structs forbid them), missing or mistyped ones are
``InvalidRequest`` with ``param`` set to the path (``messages[0].role``).
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from opta_lmx.errors import InvalidRequest, UnsupportedParameter

T = TypeVar("T")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`(?: - at `\$\.?(.*)`)?")
_MISSING_FIELD = re.compile(r"missing required field `([^`]*)`(?: - at `\$\.?(.*)`)?")
_AT_PATH = re.compile(r" - at `\$\.?(.*)`$")


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decode and validate a request body; raises ``InvalidRequest``/``UnsupportedParameter``
    naming the field."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None


def _join(path: str | None, field: str) -> str:
    return f"{path}.{field}" if path else field


def validation_error(message: str) -> InvalidRequest | UnsupportedParameter:
    if match := _UNKNOWN_FIELD.search(message):
        param = _join(match.group(2), match.group(1))
        return UnsupportedParameter(f"Unsupported parameter: '{param}' is not supported.", param=param)
    if match := _MISSING_FIELD.search(message):
        param = _join(match.group(2), match.group(1))
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    match = _AT_PATH.search(message)
    param = match.group(1) if match else None
    return InvalidRequest(f"Invalid value for '{param}': {message}" if param else message, param=param)
