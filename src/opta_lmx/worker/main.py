"""Worker process entry point: ``python -m opta_lmx.worker --model NAME --path PATH ...``
(or ``--spare ID``: a warm spare that waits for a ``Load``, see ``spare.py``).

Start-up order: watch the parent-death pipe, import the engine, load the model, connect the
sockets, send ``Ready`` (only now is the worker RUNNING), then serve until Shutdown or SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from typing import Callable

import msgspec
import zmq

from opta_lmx.config import EngineOptions
from opta_lmx.engine_choice import resolve_engine
from opta_lmx.proto import PROTO_VERSION, LoadFailed, Ready
from opta_lmx.runtime import exit_on_parent_death
from opta_lmx.worker.engines.base import Engine

EXIT_LOAD_FAILED = 3


def load_engine_class(spec: str) -> Callable[[str, str, EngineOptions], Engine]:
    """``mlx``, ``gguf``, ``embedding``, ``gguf-embedding`` or a plug-in ``package.module:Class`` built as
    ``Class(model_name, path, options)``."""
    if spec == "mlx":
        from opta_lmx.worker.engines.mlx import MlxEngine

        return MlxEngine
    if spec == "embedding":
        from opta_lmx.worker.engines.embedding import EmbeddingEngine

        return EmbeddingEngine
    if spec in ("gguf", "gguf-embedding"):
        try:
            import llama_cpp  # noqa: F401  (the optional dependency: say which extra brings it)
        except ImportError:
            raise ImportError(
                "GGUF models need llama-cpp-python, which is not installed: "
                "pip install 'opta-lmx[gguf]'"
            ) from None
        if spec == "gguf-embedding":
            from opta_lmx.worker.engines.gguf_embedding import GgufEmbeddingEngine

            return GgufEmbeddingEngine
        from opta_lmx.worker.engines.gguf import GgufEngine

        return GgufEngine
    module_name, _, class_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="opta-lmx-worker")
    parser.add_argument("--model")
    parser.add_argument("--path")
    parser.add_argument("--engine", default="auto", help='"auto", "mlx", "gguf", "embedding", "gguf-embedding" or "package.module:Class"')
    parser.add_argument("--generation", type=int, default=0)
    parser.add_argument("--spare", type=int, default=None, help="start as warm spare number N")
    parser.add_argument("--data", required=True, help="gateway data ROUTER address")
    parser.add_argument("--control", required=True, help="supervisor worker ROUTER address")
    parser.add_argument("--death-fd", type=int, default=-1)
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--options", default="{}", help="the model's engine options (JSON)")
    args = parser.parse_args(argv)
    if args.spare is None and (args.model is None or args.path is None):
        parser.error("--model and --path are required (unless --spare)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.death_fd >= 0:
        exit_on_parent_death(args.death_fd, "worker")
    context = zmq.Context()
    if args.spare is not None:
        from opta_lmx.worker.spare import wait_for_load

        load = wait_for_load(context, args.control, args.spare)
        args.model, args.path, args.engine = load.model, load.path, load.engine
        args.generation, args.heartbeat_interval = load.generation, load.heartbeat_interval
        args.options = load.options.decode()
    return serve(context, args)


def serve(context: zmq.Context, args: argparse.Namespace) -> int:
    """Load the model and serve it."""
    from opta_lmx.worker.liveness import Heartbeats, process_memory

    identity = f"{args.model}#{args.generation}".encode()
    control = context.socket(zmq.DEALER)
    control.setsockopt(zmq.IDENTITY, identity)
    control.setsockopt(zmq.LINGER, 1000)
    control.connect(args.control)
    encoder = msgspec.msgpack.Encoder()

    started = time.perf_counter()
    try:
        engine_class = load_engine_class(resolve_engine(args.engine, args.path))
        imported = time.perf_counter()
        options = msgspec.json.decode(args.options, type=EngineOptions)
        engine = engine_class(args.model, args.path, options)
    except Exception as exc:
        message = f"cannot load {args.path!r}: {type(exc).__name__}: {exc}"
        print(f"worker {args.model}: {message}", file=sys.stderr, flush=True)
        control.send(encoder.encode(LoadFailed(generation=args.generation, message=message)))
        control.close()
        context.term()
        return EXIT_LOAD_FAILED
    loaded = time.perf_counter()

    data = context.socket(zmq.DEALER)
    data.setsockopt(zmq.IDENTITY, identity)
    data.setsockopt(zmq.LINGER, 1000)
    data.setsockopt(zmq.SNDHWM, 0)  # never drop or block a token on a slow gateway
    data.connect(args.data)

    heartbeats = Heartbeats(control, engine, args.generation, args.heartbeat_interval)
    signal.signal(signal.SIGTERM, lambda *_: heartbeats.stop_now())
    signal.signal(signal.SIGINT, lambda *_: heartbeats.stop_now())
    ready = Ready(
        proto_version=PROTO_VERSION,
        model=args.model,
        generation=args.generation,
        pid=os.getpid(),
        ctx_len=engine.ctx_len,
        memory=process_memory(engine),
        import_seconds=imported - started,
        load_seconds=loaded - imported,
    )
    control.send(encoder.encode(ready))
    heartbeats.start()

    from opta_lmx.worker.loop import ModelLoop

    ModelLoop(data, engine, heartbeats, options.stream_interval_ms / 1000).run()
    # The heartbeat thread owns the control socket: let it leave its poll before closing.
    heartbeats.stop_now()
    engine.close()
    heartbeats.join(timeout=2 * args.heartbeat_interval + 1)
    data.close()
    context.destroy(linger=1000)
    return 0
