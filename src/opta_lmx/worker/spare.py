"""Warm spare mode: pay for Python start-up and the engine imports before any model is asked for.

The supervisor keeps one spare waiting; a load then costs only the weights. On ``Load`` the spare
points its output at the model's log and continues exactly as a freshly spawned worker would.
"""

from __future__ import annotations

import os
import sys
import time

import msgspec
import zmq

from opta_lmx.proto import SPARE_IDENTITY_PREFIX, Load, Shutdown, SpareReady, WorkerCommand



def wait_for_load(context: zmq.Context, control_address: str, spare_id: int) -> Load:
    """Import, announce, wait; returns the ``Load``."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, f"{SPARE_IDENTITY_PREFIX}{spare_id}".encode())
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(control_address)
    started = time.perf_counter()
    import mlx_lm  # noqa: F401  (the point of a spare: these imports are paid now)

    import opta_lmx.worker.engines.mlx  # noqa: F401
    import opta_lmx.worker.loop  # noqa: F401

    imports = time.perf_counter() - started
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(WorkerCommand)
    sock.send(encoder.encode(SpareReady(pid=os.getpid(), import_seconds=imports)))
    while True:
        match decoder.decode(sock.recv()):
            case Load() as load:
                break
            case Shutdown():
                sys.exit(0)
    sock.close()
    _redirect_output(load.log_path)
    return load


def _redirect_output(log_path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
