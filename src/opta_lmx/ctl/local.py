"""lmxctl's way to a supervisor on this machine: its control socket, found through the address
file in the data directory."""

from __future__ import annotations

from pathlib import Path

import msgspec
import zmq

from opta_lmx.proto import ControlReply, ControlRequest
from opta_lmx.runtime import control_address_file

QUICK_MS = 5000


class NotRunning(Exception):
    """No server answers (no address file, nothing listening, no reply in time)."""


class Client:
    def __init__(self, data_dir: Path) -> None:
        try:
            self.address = control_address_file(data_dir).read_text().strip()
        except OSError:
            raise NotRunning(f"no supervisor is running (no {control_address_file(data_dir)})") from None
        self._context = zmq.Context()
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        return sock

    def call(self, message: ControlRequest, timeout_ms: int = QUICK_MS) -> ControlReply:
        self._sock.send(msgspec.msgpack.encode(message))
        try:
            ready = self._sock.poll(timeout_ms)
        except BaseException:
            # Interrupted (Ctrl-C) while the reply is on its way: a new socket, so that the next
            # call never reads this one's reply.
            self._sock.close()
            self._sock = self._connect()
            raise
        if not ready:
            raise NotRunning(f"the supervisor at {self.address} does not answer")
        return msgspec.msgpack.decode(self._sock.recv(), type=ControlReply)

    def close(self) -> None:
        self._sock.close()
        self._context.term()
