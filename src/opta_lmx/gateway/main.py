"""Gateway process entry point: ``python -m opta_lmx.gateway --runtime-dir DIR``.

Serves the app with hypercorn. On SIGTERM it first ends every open stream with a terminal
``server_shutdown`` event (hypercorn's graceful timeout never fires while SSE streams are open,
hypercorn #308), then lets hypercorn stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import anyio
import msgspec
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from opta_lmx.config import Config
from opta_lmx.gateway.app import create_app
from opta_lmx.gateway.state import GatewayState
from opta_lmx.runtime import EXIT_CANNOT_LISTEN, Runtime, exit_on_parent_death

log = logging.getLogger("opta_lmx.gateway")

_STREAM_DRAIN = 0.5
_HARD_STOP = 8.0


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def run_gateway(config: Config, runtime: Runtime) -> int:
    state = GatewayState(config, runtime)
    await state.start()
    # Starlette streams through anyio, which imports its asyncio backend on first use: 40-100 ms
    # that would otherwise stall the first streamed response, and every stream beside it.
    await anyio.sleep(0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    hyper = HypercornConfig()
    hyper.bind = [_bind(config.server.host, config.server.port)]
    hyper.graceful_timeout = 2.0
    # A burst of connections (hundreds of bots at once) waits in the accept queue instead of
    # being reset: hypercorn's default backlog is 100.
    hyper.backlog = 4096
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("opta_lmx.gateway.http")

    async def shutdown_trigger() -> None:
        await stop.wait()
        _hard_stop_after(_HARD_STOP)
        log.info("shutting down: ending open streams")
        state.begin_shutdown()
        await asyncio.sleep(_STREAM_DRAIN)  # let the streams write their final event

    try:
        _probe_listen(config.server.host, config.server.port)
    except OSError as exc:
        log.error("cannot listen on %s: %s", hyper.bind[0], exc.strerror or exc)
        state.close()
        return EXIT_CANNOT_LISTEN
    try:
        await serve(create_app(state), hyper, shutdown_trigger=shutdown_trigger)
    finally:
        state.close()
    return 0


def _probe_listen(host: str, port: int) -> None:
    """Fail early and plainly when the address is taken (hypercorn would fail mid-lifespan)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _hard_stop_after(seconds: float) -> None:
    """If a stuck connection keeps hypercorn from returning, exit anyway."""
    timer = threading.Timer(seconds, lambda: os._exit(0))
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opta-lmx-gateway")
    parser.add_argument("--runtime-dir", required=True, type=Path)
    parser.add_argument("--death-fd", type=int, default=-1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(message)s")
    if args.death_fd >= 0:
        exit_on_parent_death(args.death_fd, "gateway")
    runtime = Runtime(args.runtime_dir)
    config = msgspec.json.decode(runtime.config_path.read_bytes(), type=Config)
    return asyncio.run(run_gateway(config, runtime))
