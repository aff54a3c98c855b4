"""The bounded store of recent responses: least recently used out first, by count and by size."""

from __future__ import annotations

import pytest

from opta_lmx.gateway.responses.store import ResponseNotFound, ResponseStore
from opta_lmx.proto import ChatMessage


def response(n: int, text: str = "") -> dict:
    return {"id": f"resp_{n}", "object": "response", "text": text}


def test_put_get_delete() -> None:
    store = ResponseStore()
    conversation = [ChatMessage("user", "hi")]
    store.put(response(1), conversation)
    assert store.get("resp_1").response == response(1) and store.get("resp_1").conversation == conversation
    assert store.delete("resp_1") and not store.delete("resp_1")
    with pytest.raises(ResponseNotFound) as caught:
        store.get("resp_1", param="previous_response_id")
    assert caught.value.status == 404 and caught.value.param == "previous_response_id"
    assert "store=false" in caught.value.message


def test_the_least_recently_used_goes_first_when_full() -> None:
    store = ResponseStore(max_entries=2)
    store.put(response(1), [])
    store.put(response(2), [])
    store.get("resp_1")  # now the most recently used
    store.put(response(3), [])
    assert len(store) == 2
    store.get("resp_1"), store.get("resp_3")
    with pytest.raises(ResponseNotFound):
        store.get("resp_2")


def test_size_bound() -> None:
    store = ResponseStore(max_bytes=1000)
    store.put(response(1, "x" * 400), [])
    store.put(response(2), [ChatMessage("user", "y" * 400)])
    store.put(response(3, "z" * 400), [])  # does not fit beside both: the oldest goes
    assert [r for r in ("resp_1", "resp_2", "resp_3") if _kept(store, r)] == ["resp_2", "resp_3"]
    store.put(response(4, "w" * 2000), [])  # larger than the whole store: not kept, nothing dropped
    assert not _kept(store, "resp_4") and _kept(store, "resp_3")


def _kept(store: ResponseStore, response_id: str) -> bool:
    try:
        store.get(response_id)
    except ResponseNotFound:
        return False
    return True
