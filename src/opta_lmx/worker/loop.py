"""The model loop: receive requests, step the engine, send what it produced.

Runs in the worker's main thread and alone owns the data socket, so a token goes from the engine
to the socket with no thread hop. Between engine steps it drains incoming messages without
blocking, so a Cancel takes effect within one decode step.
"""

from __future__ import annotations

import sys
import time

import msgspec
import zmq

from opta_lmx.proto import Cancel, Failed, FromWorker, Generate, TokenChunk, ToWorker
from opta_lmx.worker.engines.base import Engine
from opta_lmx.worker.liveness import Heartbeats

_IDLE_POLL_MS = 100


class ModelLoop:
    def __init__(self, data: zmq.Socket, engine: Engine, commands: Heartbeats) -> None:
        self._data = data
        self._engine = engine
        self._stop = commands.stop
        self._drain = commands.drain
        self._trim = commands.trim
        self._commands = commands
        self._encoder = msgspec.msgpack.Encoder()
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
                case Generate(request_id=rid) if self._drain.is_set():
                    self._send([Failed(rid, "model_unavailable", "the model is being unloaded; retry")])
                case Generate():
                    self._send(self._engine.submit(message))
                case Cancel(request_id=rid):
                    self._send(self._engine.cancel(rid))

    def _send(self, messages: list[FromWorker]) -> None:
        for message in messages:
            self._data.send(self._encoder.encode(message))
        if not self._commands.first_token_seconds and any(isinstance(m, TokenChunk) for m in messages):
            self._commands.first_token_seconds = time.perf_counter() - self._commands.began
