"""The contract every engine keeps with the worker loop."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from opta_lmx.proto import Embed, FromWorker, Generate, MemoryReading


class Refused(Exception):
    """This engine cannot serve that kind of request (text generation from an embedding model):
    the client's mistake, answered with a 400 carrying this message."""


class Engine(Protocol):
    """A loaded model that generates for many requests, one step at a time.

    The worker loop calls these from one thread only. Contract:

    - ``submit`` answers at once with ``Started`` (accepted: it fits the context) or its
      ``Failed``; an accepted request then produces ``TokenChunk``s and ends with exactly one
      ``Finished`` or ``Failed`` over the following ``step`` calls.
    - ``step`` advances every active request by at most one token and returns the messages that
      produced, in order. It never blocks waiting for new requests.
    - ``cancel`` is idempotent: an unknown or finished request id is ignored. A cancelled request
      ends with ``Finished(finish_reason="cancelled")`` so its slot is visibly freed.
    - ``abort_all`` ends every active request with ``Failed(code, message)`` (shutdown).
    - ``close`` is called once, after the last ``step`` and ``abort_all``, before the process
      exits (drain, unload, swap, SIGTERM; not after SIGKILL).
    """

    model_name: str
    ctx_len: int

    @property
    def active(self) -> int:
        """Requests accepted and not yet finished."""
        ...

    @property
    def progress(self) -> int:
        """Work done since start: tokens sampled plus prompt chunks prefilled. A counter that
        stands still while ``active`` is hung; a long prompt's prefill moves it too."""
        ...

    def prompt_tokens(self, request: Generate) -> list[int]:
        """The request's prompt as the model sees it: the chat template's rendering of its
        messages and tools, or a completion's prompt. Raises if the template refuses them."""
        ...

    def submit(self, request: Generate) -> list[FromWorker]: ...

    def step(self) -> list[FromWorker]: ...

    def cancel(self, request_id: int) -> list[FromWorker]: ...

    def abort_all(self, code: str, message: str) -> list[FromWorker]: ...

    def memory(self) -> MemoryReading:
        """The engine's allocator figures (process figures are added by the worker)."""
        ...

    def trim(self) -> None:
        """Release cached memory that no request needs."""
        ...

    def close(self) -> None:
        """The worker is exiting: save what is meant to outlive it (the MLX engine writes its
        prompt cache to its disk tier here) and wait until that is done. Nothing is generated
        any more; it may take seconds (the supervisor's ``stop_grace`` bounds it with SIGKILL).
        An engine with nothing to save does nothing."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """An engine that also answers ``Embed``: vectors, or relevance scores for a query.

    ``embed`` answers at once with ``Failed`` (bad input) or nothing; the ``Embeddings`` reply
    comes from a later ``step``. Until then the request counts in ``active``, and ``cancel`` and
    ``abort_all`` end it as they end a generation. Engines without ``embed`` make no embeddings:
    the worker loop refuses an ``Embed`` for them.
    """

    def embed(self, request: Embed) -> list[FromWorker]: ...
