"""Beside the model loop: heartbeats to the supervisor and the supervisor's commands."""

from __future__ import annotations

import threading

import msgspec
import psutil
import zmq

from opta_lmx.proto import Heartbeat, MemoryReading, Shutdown, Trim, WorkerCommand
from opta_lmx.worker.engines.base import Engine


def process_memory(engine: Engine | None = None) -> MemoryReading:
    """The engine's allocator figures plus this process's RSS, USS and (Linux) PSS."""
    info = psutil.Process().memory_full_info()
    base = engine.memory() if engine is not None else MemoryReading()
    return msgspec.structs.replace(base, rss=info.rss, uss=getattr(info, "uss", 0), pss=getattr(info, "pss", 0))


class Heartbeats(threading.Thread):
    """Sends a Heartbeat every ``interval`` seconds and receives supervisor commands.

    Owns the control socket from the moment it starts (ZeroMQ sockets are not shared between
    threads). Commands become flags the model loop reads between steps.
    """

    def __init__(
        self, sock: zmq.Socket, engine: Engine, generation: int, interval: float, began: float
    ) -> None:
        super().__init__(name="heartbeats", daemon=True)
        # perf_counter() when this worker's load began; the model loop sets first_token_seconds.
        self.began = began
        self.first_token_seconds = 0.0
        self._sock = sock
        self._engine = engine
        self._generation = generation
        self._interval = interval
        # stop: abort what is in flight and exit; drain: take nothing new, finish, exit.
        self.stop = threading.Event()
        self.drain = threading.Event()
        self.trim = threading.Event()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(WorkerCommand)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self.stop.is_set():
            self._send_heartbeat()
            if poller.poll(self._interval * 1000):
                self._receive_commands()

    def stop_now(self) -> None:
        self.stop.set()

    def _send_heartbeat(self) -> None:
        beat = Heartbeat(
            generation=self._generation,
            progress=self._engine.progress,
            active_requests=self._engine.active,
            memory=process_memory(self._engine),
            first_token_seconds=self.first_token_seconds,
        )
        self._sock.send(self._encoder.encode(beat))

    def _receive_commands(self) -> None:
        while True:
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            match self._decoder.decode(frame):
                case Shutdown(drain=True):
                    self.drain.set()
                case Shutdown():
                    self.stop_now()
                case Trim():
                    self.trim.set()
