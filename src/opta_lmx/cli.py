"""``opta-lmx``: serve models, and manage the models on disk.

    opta-lmx serve [--config FILE] [--host 127.0.0.1] [--port 1234]
    opta-lmx models [--config FILE] [--json]          the models on disk
    opta-lmx pull ORG/NAME[@REVISION] [--quant Q4_K_M] download from the Hugging Face hub
    opta-lmx rm NAME                                  delete a model from disk
    opta-lmx convert SRC DST [--bits N] [--group-size N] [--dtype D]   GGUF or HF dir -> MLX
    opta-lmx demo-model PATH [--size tiny|small] [--seed 0] [--thinking] [--context N] [--vocab N]   random weights, for tests
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import msgspec

from opta_lmx.config import Config, default_data_dir, exposure_error, load_config, with_demo_model
from opta_lmx.errors import ConfigError
from opta_lmx.store import commands as store_commands


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opta-lmx", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the supervisor, the gateway and the workers")
    serve.add_argument("--config", type=Path, help="TOML config (see etc/opta-lmx.toml)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 1234)")
    demo = commands.add_parser("demo-model", help="write a random-weight model with a real tokenizer")
    demo.add_argument("path", type=Path)
    demo.add_argument("--size", choices=["tiny", "small"], default="tiny")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--thinking", action="store_true", help="a reasoning variant with <think> markers")
    demo.add_argument("--context", type=int, help="context length in tokens (default: the size's own)")
    demo.add_argument("--vocab", type=int, help="vocabulary size (default: the size's own)")
    store_commands.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo-model":
        from opta_lmx.demo.builder import build_demo_model

        build_demo_model(args.path, args.size, args.seed, args.thinking, args.context, args.vocab)
        print(f"wrote {args.size} demo model to {args.path}")
        return 0
    if args.command != "serve":
        logging.basicConfig(level=logging.WARNING, format="opta-lmx: %(message)s")
        return store_commands.run(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    try:
        config, data_dir = _serve_config(args)
    except ConfigError as exc:
        print(f"opta-lmx: {exc}", file=sys.stderr)
        return 2
    from huggingface_hub import constants

    from opta_lmx.store.local import LocalStore
    from opta_lmx.supervisor.main import run_supervisor

    reload_source = (lambda: _serve_config(args)[0]) if args.config else None
    # The Hugging Face cache's location and the hub's address are read from the environment
    # ($HF_HUB_CACHE / $HF_HOME, $HF_ENDPOINT) here, once.
    return run_supervisor(config, data_dir, reload_source, LocalStore(data_dir, Path(constants.HF_HUB_CACHE)))


def _serve_config(args: argparse.Namespace) -> tuple[Config, Path]:
    config = load_config(args.config) if args.config else Config()
    server = config.server
    if args.host:
        server = msgspec.structs.replace(server, host=args.host)
    if args.port:
        server = msgspec.structs.replace(server, port=args.port)
    config = msgspec.structs.replace(config, server=server)
    if problem := exposure_error(server):
        raise ConfigError(problem)
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
    if not config.models:
        from opta_lmx.store.default_model import ensure_default_model

        config = with_demo_model(config, ensure_default_model(data_dir / "models" / "opta-demo"))
    return config, data_dir
