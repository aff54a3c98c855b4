"""The request body limit, enforced while the body is read.

A body whose ``Content-Length`` is over the limit is refused before any of it is read; one sent
without a length (chunked) is refused once the bytes read pass the limit. The refusal is raised
from the ASGI ``receive`` the endpoint reads the body through, so the endpoint's dialect answers
it in its own error shape (413).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opta_lmx.errors import RequestTooLarge


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        limit = self.limit
        read = 0

        async def limited_receive() -> Message:
            nonlocal read
            if declared is not None and declared > limit:
                raise _too_large(declared, limit)
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    raise _too_large(read, limit)
            return message

        await self.app(scope, limited_receive, send)


def _too_large(size: int, limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"The request body ({size} bytes or more) is over this server's limit of {limit} bytes "
        "([server] max_body_bytes)."
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
