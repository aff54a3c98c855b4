"""Recent responses, kept in the gateway's memory for ``GET``/``DELETE /v1/responses/{id}`` and
``previous_response_id``.

Bounded by count and by size, least recently used out first; nothing is written to disk, so a
gateway restart empties it. Each entry holds the response as it was sent and the conversation up
to and including it (the chat messages, without ``instructions``: a follow-up brings its own).
Entries share their message objects, so the size counted (each entry's whole conversation) is
more than the memory used.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import msgspec

from opta_lmx.errors import RequestError
from opta_lmx.proto import ChatMessage

MAX_ENTRIES = 1000
MAX_BYTES = 64 * 1024 * 1024

_json = msgspec.json.Encoder()


class ResponseNotFound(RequestError):
    status = 404
    code = "response_not_found"


class Stored(NamedTuple):
    response: dict[str, Any]
    conversation: list[ChatMessage]
    size: int


class ResponseStore:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Stored] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response: dict[str, Any], conversation: list[ChatMessage]) -> None:
        """Keep ``response``, dropping the least recently used ones to make room; one larger than
        the whole store is not kept."""
        size = len(_json.encode(response)) + len(_json.encode(conversation))
        if size > self.max_bytes:
            return
        self.delete(response["id"])
        while self._entries and (len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes):
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= dropped.size
        self._entries[response["id"]] = Stored(response, conversation, size)
        self._bytes += size

    def get(self, response_id: str, param: str | None = None) -> Stored:
        """The entry, now the most recently used; ``ResponseNotFound`` (404) if it is not kept."""
        entry = self._entries.get(response_id)
        if entry is None:
            raise ResponseNotFound(
                f"No response with id '{response_id}' is stored here: it was never created, was created with "
                f"store=false, was deleted, or was dropped from the server's store of the {self.max_entries} most "
                "recent responses (kept in memory, emptied by a restart).",
                param=param,
            )
        self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True
