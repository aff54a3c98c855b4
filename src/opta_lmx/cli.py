"""``opta-lmx``: serve the configured models, or write a demo model.

    opta-lmx serve [--config FILE] [--host 127.0.0.1] [--port 1234]
    opta-lmx demo-model PATH [--size tiny|small] [--seed 0] [--thinking] [--context N] [--vocab N]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec

from opta_lmx.config import Config, default_data_dir, exposure_error, load_config, with_demo_model
from opta_lmx.errors import ConfigError


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo-model":
        from opta_lmx.demo.builder import build_demo_model

        build_demo_model(args.path, args.size, args.seed, args.thinking, args.context, args.vocab)
        print(f"wrote {args.size} demo model to {args.path}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    try:
        config, data_dir = _serve_config(args)
    except ConfigError as exc:
        print(f"opta-lmx: {exc}", file=sys.stderr)
        return 2
    from opta_lmx.supervisor.main import run_supervisor

    reload_source = (lambda: _serve_config(args)[0]) if args.config else None
    return run_supervisor(config, data_dir, reload_source)


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
        config = with_demo_model(config, ensure_demo_model(data_dir / "models" / "opta-demo"))
    return config, data_dir


def ensure_demo_model(path: Path) -> Path:
    """Build the demo model once; a half-written build is never mistaken for a finished one."""
    if (path / "model.safetensors").exists():
        return path
    logging.getLogger("opta_lmx").info("building the demo model into %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=path.parent))
    try:
        # In a child process: the supervisor itself never imports mlx.
        subprocess.run(
            [sys.executable, "-m", "opta_lmx", "demo-model", str(staging)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        os.replace(staging, path)
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"could not build the demo model (exit status {exc.returncode})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
