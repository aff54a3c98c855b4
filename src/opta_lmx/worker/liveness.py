"""Beside the model loop: heartbeats to the supervisor and the supervisor's commands."""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading

import msgspec
import psutil
import zmq

from opta_lmx.proto import Heartbeat, MemoryReading, Shutdown, Trim, WorkerCommand
from opta_lmx.worker.engines.base import Engine

_RUSAGE_INFO_V2 = 2


def process_memory(engine: Engine | None = None) -> MemoryReading:
    """The engine's allocator figures plus this process's RSS, USS and (Linux) PSS.

    On macOS, USS is replaced by the physical footprint: what Activity Monitor and the kernel's
    memory pressure count, Metal buffers included (RSS and USS miss them there)."""
    info = psutil.Process().memory_full_info()
    base = engine.memory() if engine is not None else MemoryReading()
    uss = _phys_footprint() if sys.platform == "darwin" else 0
    return msgspec.structs.replace(
        base, rss=info.rss, uss=uss or getattr(info, "uss", 0), pss=getattr(info, "pss", 0)
    )


def _phys_footprint() -> int:
    """``ri_phys_footprint`` from ``proc_pid_rusage`` (macOS; 0 if unavailable)."""
    try:
        libc = ctypes.CDLL("/usr/lib/libSystem.dylib")
        buffer = ctypes.create_string_buffer(512)  # larger than any rusage_info version
        if libc.proc_pid_rusage(os.getpid(), _RUSAGE_INFO_V2, buffer) != 0:
            return 0
        # rusage_info_v2: a 16-byte uuid, then uint64s; ri_phys_footprint is the eighth.
        return struct.unpack_from("<Q", buffer, 16 + 7 * 8)[0]
    except (OSError, AttributeError):
        return 0


class Heartbeats(threading.Thread):
    """Sends a Heartbeat every ``interval`` seconds and receives supervisor commands.

    Owns the control socket from the moment it starts (ZeroMQ sockets are not shared between
    threads). Commands become flags the model loop reads between steps.
    """

    def __init__(
        self, sock: zmq.Socket, engine: Engine, generation: int, interval: float
    ) -> None:
        super().__init__(name="heartbeats", daemon=True)
        # Set by the model loop: the first request's time to its first token.
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
        self._process = psutil.Process()

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
            cpu_seconds=sum(self._process.cpu_times()[:2]),  # user + system
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
