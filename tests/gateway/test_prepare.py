"""A request that reaches a worker as it begins to drain: the worker refuses it untouched, and the
gateway sends it again to the model loaded once more (real sockets, a stand-in model table)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
import zmq

from opta_lmx.config import Config
from opta_lmx.errors import WorkerUnavailable
from opta_lmx.gateway.generation import Job, first_reply, prepare
from opta_lmx.gateway.link import WorkerLink
from opta_lmx.proto import ChatMessage, Embed, Embeddings, Failed, Generate, Started
from tests.gateway.test_link import link, received  # noqa: F401 (fixture)

DRAINING = "tiny#1"


class Models:
    """The gateway's model table as ``prepare`` uses it: ``identities`` are the workers that
    ``ready`` hands out in turn, each after the one before announced its drain."""

    def __init__(self, identities: list[str]) -> None:
        self.identities = identities
        self.waited: list[str] = []

    async def ready(self, name: str, ready_wait: float, load_timeout: float) -> SimpleNamespace:
        return SimpleNamespace(identity=self.identities[0])

    async def wait_draining(self, name: str, identity: str, timeout: float) -> None:
        self.waited.append(identity)
        if len(self.identities) > 1:
            self.identities.pop(0)


def dealer(context: zmq.Context, address: str, identity: str) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def refuse_as_draining(sock: zmq.Socket) -> int:
    request = received(sock)
    assert isinstance(request, (Generate, Embed))
    sock.send(msgspec.msgpack.encode(Failed(request.request_id, "model_unavailable", "the model is being unloaded; retry")))
    return request.request_id


@pytest.fixture
def workers(link: WorkerLink, tmp_path: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    context = zmq.Context()
    address = f"ipc://{tmp_path}/data.sock"  # where the link fixture binds
    socks = {name: dealer(context, address, name) for name in (DRAINING, "tiny#2")}
    yield socks
    for sock in socks.values():
        sock.close()
    context.term()


async def test_a_request_refused_by_a_draining_worker_goes_to_the_model_loaded_again(link: WorkerLink, workers: dict[str, zmq.Socket]) -> None:  # noqa: F811
    models = Models([DRAINING, "tiny#2"])
    state = SimpleNamespace(config=Config(), link=link, models=models)
    job = Job("tiny", {"messages": [ChatMessage("user", "hi")]})
    preparing = asyncio.ensure_future(prepare(state, job))  # type: ignore[arg-type]
    await asyncio.to_thread(refuse_as_draining, workers[DRAINING])
    request = await asyncio.to_thread(received, workers["tiny#2"])
    assert isinstance(request, Generate) and request.messages == [ChatMessage("user", "hi")]
    workers["tiny#2"].send(msgspec.msgpack.encode(Started(request.request_id, 3)))
    pending = await asyncio.wait_for(preparing, 5)
    assert pending.started == Started(request.request_id, 3) and pending.identity == b"tiny#2"
    assert models.waited == [DRAINING]  # it waited for the drain's notice before asking again
    link.finish(pending)


async def test_a_worker_that_keeps_refusing_ends_in_a_503_error(link: WorkerLink, workers: dict[str, zmq.Socket]) -> None:  # noqa: F811
    state = SimpleNamespace(config=Config(), link=link, models=Models([DRAINING]))
    preparing = asyncio.ensure_future(prepare(state, Job("tiny", {"messages": [ChatMessage("user", "hi")]})))  # type: ignore[arg-type]
    for _ in range(3):
        await asyncio.to_thread(refuse_as_draining, workers[DRAINING])
    with pytest.raises(WorkerUnavailable, match="being unloaded") as refused:
        await asyncio.wait_for(preparing, 5)
    assert refused.value.status == 503
    assert link.in_flight == 0


async def test_an_embedding_refused_by_a_draining_worker_goes_to_the_model_loaded_again(link: WorkerLink, workers: dict[str, zmq.Socket]) -> None:  # noqa: F811
    models = Models([DRAINING, "tiny#2"])
    state = SimpleNamespace(config=Config(), link=link, models=models)
    embedding = asyncio.ensure_future(first_reply(state, Job("tiny", {"texts": ["a cat"]}), Embed))  # type: ignore[arg-type]
    await asyncio.to_thread(refuse_as_draining, workers[DRAINING])
    request = await asyncio.to_thread(received, workers["tiny#2"])
    assert isinstance(request, Embed) and request.texts == ["a cat"]
    reply = Embeddings(request.request_id, b"\0" * 16, 4, 3)
    workers["tiny#2"].send(msgspec.msgpack.encode(reply))
    pending, first = await asyncio.wait_for(embedding, 5)
    assert first == reply and pending.identity == b"tiny#2" and models.waited == [DRAINING]
