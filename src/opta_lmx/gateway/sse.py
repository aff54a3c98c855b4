"""Server-sent events as the streaming dialects write them.

JSON allows U+0085, U+2028 and U+2029 raw inside a string, but line-splitting clients
(``str.splitlines``, which httpx's ``aiter_lines`` follows) break an SSE line at them: they are sent
escaped. UTF-8 never has these byte sequences inside another character, so replacing the bytes is
exact.
"""

from __future__ import annotations

from typing import Any

import msgspec

_json = msgspec.json.Encoder()
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def json_line_safe(value: Any) -> bytes:
    """``value`` as JSON with no character that a line-splitting client reads as a line break."""
    data = _json.encode(value)
    if b"\xc2\x85" in data or b"\xe2\x80" in data:
        for raw, escaped in _LINE_BREAKS:
            data = data.replace(raw, escaped)
    return data


def data_event(value: Any) -> bytes:
    """One ``data:`` event (OpenAI's streams)."""
    return b"data: " + json_line_safe(value) + b"\n\n"


def named_event(name: str, value: Any) -> bytes:
    """One event with an ``event:`` line (Anthropic's and the Responses API's streams)."""
    return b"event: " + name.encode() + b"\ndata: " + json_line_safe(value) + b"\n\n"
