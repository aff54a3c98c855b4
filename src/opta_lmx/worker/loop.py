"""The model loop: receive requests, step the engine, send what it produced.

Runs in the worker's main thread and alone owns the data socket, so a token goes from the engine
to the socket with no thread hop. Between engine steps it drains incoming messages without
blocking, so a Cancel takes effect within one decode step.

Messages leave through an ``Outbox``: what a step produced for all its requests goes as one
multipart message (a frame per worker message), and when steps are faster than
the stream interval (``[models.options] stream_interval_ms``) token chunks wait a few steps to
leave together. Each message costs the
gateway a wake-up and each chunk the client an SSE event, CPU that a small model's engine is
competing for on the same cores.
"""

from __future__ import annotations

import sys
import time

import msgspec
import zmq

from opta_lmx.proto import Cancel, Embed, Embeddings, Failed, Finished, FromWorker, Generate, Started, TokenChunk, ToWorker
from opta_lmx.worker.engines.base import Embedder, Engine, Refused
from opta_lmx.worker.liveness import Heartbeats

_IDLE_POLL_MS = 100
# The default of how long token chunks may wait to leave together. Only steps faster than this make
# them wait (the tiny demo model, a step every ~1.5 ms: ~3 tokens a message instead of 1); a model
# whose steps take longer is streamed exactly as before, one message per step.
STREAM_INTERVAL = 0.004


class Outbox:
    """Sends worker messages in order, each call's as one multipart message; token chunks may wait.

    Token chunks wait only while steps come quicker than ``interval`` (the step that produced
    them took less), and only until the oldest waiting one is ``interval`` old. Anything else
    (``Started``, ``Finished``, ``Failed``) and a request's first generated chunk send everything
    at once, so TTFT and the end of a request are never delayed, and a new request's prefill
    (the step after its ``Started``) never holds back the others' tokens. A chunk's extra delay
    is at most ``interval`` plus one step.
    """

    def __init__(self, socket: zmq.Socket, interval: float = STREAM_INTERVAL) -> None:
        self._socket = socket
        self._interval = interval
        self._encoder = msgspec.msgpack.Encoder()
        self._frames: list[bytes] = []
        self._oldest = 0.0  # when the oldest waiting message was produced
        self._last = 0.0  # when the previous call came (the end of the previous step)
        self._streaming: set[int] = set()  # requests whose first generated chunk has gone

    def send(self, messages: list[FromWorker]) -> None:
        if not messages:
            return
        urgent = self._urgent(messages)
        now = time.perf_counter()
        quick, self._last = now - self._last < self._interval, now
        if not self._frames:
            self._oldest = now
        encode = self._encoder.encode
        self._frames.extend([encode(message) for message in messages])
        if urgent or not quick or now - self._oldest >= self._interval:
            self.flush()

    def _urgent(self, messages: list[FromWorker]) -> bool:
        urgent = False
        for message in messages:
            if type(message) is not TokenChunk:
                urgent = True
                if type(message) is not Started:  # a terminal message
                    self._streaming.discard(message.request_id)
            elif message.request_id not in self._streaming:
                urgent = True
                if message.n_tokens:  # not an echoed prompt: its first generated text has gone
                    self._streaming.add(message.request_id)
        return urgent

    def flush(self) -> None:
        if self._frames:
            frames, self._frames = self._frames, []
            self._socket.send_multipart(frames)


class ModelLoop:
    def __init__(
        self, data: zmq.Socket, engine: Engine, commands: Heartbeats, stream_interval: float = STREAM_INTERVAL
    ) -> None:
        self._data = data
        self._outbox = Outbox(data, stream_interval)
        self._engine = engine
        self._stop = commands.stop
        self._drain = commands.drain
        self._trim = commands.trim
        self._commands = commands
        self._first_arrival: float | None = None  # when the first request came (perf_counter)
        self._decoder = msgspec.msgpack.Decoder(ToWorker)
        self._poller = zmq.Poller()
        self._poller.register(data, zmq.POLLIN)

    def run(self) -> None:
        while not self._stop.is_set():
            if self._drain.is_set() and not self._engine.active:
                break
            if self._trim.is_set():
                self._trim.clear()
                self._engine.trim()
            busy = self._engine.active > 0
            if self._poller.poll(0 if busy else _IDLE_POLL_MS):
                self._receive()
            if self._engine.active:
                self._send(self._engine.step())
        self._send(self._engine.abort_all("server_shutdown", "the model's worker is shutting down"))
        self._outbox.flush()

    def _receive(self) -> None:
        while True:
            try:
                frame = self._data.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = self._decoder.decode(frame)
            except msgspec.DecodeError as exc:
                print(f"worker: dropped an undecodable message: {exc}", file=sys.stderr, flush=True)
                continue
            match message:
                case Generate(request_id=rid) | Embed(request_id=rid) if self._drain.is_set():
                    self._send([Failed(rid, "model_unavailable", "the model is being unloaded; retry")])
                case Generate(count_only=True):
                    self._send(self._count(message))
                case Generate():
                    self._arrived()
                    try:
                        replies = self._engine.submit(message)
                    except Exception as exc:  # an engine bug must not take the other requests down
                        replies = [Failed(message.request_id, "engine_error", f"{type(exc).__name__}: {exc}")]
                    self._send(replies)
                case Embed():
                    self._arrived()
                    self._send(self._embed(message))
                case Cancel(request_id=rid):
                    self._send(self._engine.cancel(rid))

    def _arrived(self) -> None:
        if self._first_arrival is None:  # the first request: its time to first output is measured
            self._first_arrival = time.perf_counter()

    def _embed(self, request: Embed) -> list[FromWorker]:
        engine = self._engine
        if not isinstance(engine, Embedder):
            return [
                Failed(
                    request.request_id,
                    "invalid_request",
                    f"The model '{engine.model_name}' generates text; it makes no embeddings and "
                    "scores no documents (use an embedding model).",
                )
            ]
        try:
            return engine.embed(request)
        except Exception as exc:  # an engine bug must not take the other requests down
            return [Failed(request.request_id, "engine_error", f"{type(exc).__name__}: {exc}")]

    def _count(self, request: Generate) -> list[FromWorker]:
        """A count-only request: the prompt's length, nothing generated."""
        rid = request.request_id
        try:
            count = len(self._engine.prompt_tokens(request))
        except Refused as exc:  # the wrong kind of model (an embedding model)
            return [Failed(rid, "invalid_request", str(exc))]
        except Exception as exc:  # the chat template rejected the messages (jinja raise)
            return [Failed(rid, "invalid_request", f"chat template failed: {exc}")]
        return [Started(rid, count), Finished(rid, "stop", count, 0)]

    def _send(self, messages: list[FromWorker]) -> None:
        self._outbox.send(messages)
        if self._first_arrival is not None and not self._commands.first_token_seconds:
            if any(isinstance(m, (TokenChunk, Embeddings)) for m in messages):
                self._commands.first_token_seconds = time.perf_counter() - self._first_arrival
