"""The store's command-line verbs (``opta-lmx convert|pull|rm|models``): arguments in, progress
bars and tables out. The work is done by the store's modules, which an API can call the same way.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from opta_lmx.config import Config, default_data_dir, load_config
from opta_lmx.errors import ConfigError, ModelStoreError
from opta_lmx.store.inventory import LocalModel, StoreRoots, find, scan

if TYPE_CHECKING:
    from opta_lmx.proto import ControlReply, ControlRequest
    from opta_lmx.store.pull import Pull


@dataclass(frozen=True)
class StoreContext:
    config: Config
    data_dir: Path
    hf_cache: Path

    @classmethod
    def of(cls, config_path: Path | None) -> StoreContext:
        """The config (or the defaults), its data dir and the Hugging Face cache ($HF_HUB_CACHE)."""
        from huggingface_hub import constants

        config = load_config(config_path) if config_path else Config()
        data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
        return cls(config, data_dir, Path(constants.HF_HUB_CACHE))

    @property
    def roots(self) -> StoreRoots:
        return StoreRoots.of(self.config, self.data_dir, self.hf_cache)

    def inventory(self) -> list[LocalModel]:
        return scan(self.roots, self.config.models)


def add_parsers(commands: Any) -> None:
    """The store's subcommands on ``opta-lmx``'s parser."""
    convert = commands.add_parser("convert", help="make an MLX model from a GGUF file or a Hugging Face model directory")
    convert.add_argument("src", type=Path, help="a .gguf file or a model directory")
    convert.add_argument("dst", type=Path, help="the MLX model directory to write (must not exist)")
    convert.add_argument("--bits", type=int, help="quantize to this many bits (2, 3, 4, 5, 6, 8)")
    convert.add_argument("--group-size", type=int, default=64, help="quantization group size (32, 64, 128)")
    convert.add_argument("--dtype", help="float32, float16 or bfloat16 (default: float32 on a CPU, float16 on a GPU)")
    convert.add_argument("--replace", action="store_true", help="replace DST if it exists")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    pull = commands.add_parser("pull", help="download a model from the Hugging Face hub ($HF_ENDPOINT)")
    pull.add_argument("repo", help="ORG/NAME or ORG/NAME@REVISION")
    pull.add_argument("--quant", help="for a repository of GGUF files: which quantization (default Q4_K_M)")
    remove = commands.add_parser("rm", help="delete a local model from disk")
    remove.add_argument("name")
    models = commands.add_parser("models", help="list the models on disk")
    models.add_argument("--json", action="store_true", help="one JSON object per model")
    for sub in (pull, remove, models):
        sub.add_argument("--config", type=Path, help="TOML config (its data_dir and [store] settings)")


def run(args: argparse.Namespace) -> int:
    """Run one store command; errors are printed as one line (exit 1), Ctrl-C exits 130."""
    try:
        if args.command == "convert":
            return _convert(args)
        context = StoreContext.of(args.config)
        return {"pull": _pull, "rm": _remove, "models": _models}[args.command](args, context)
    except (ModelStoreError, ConfigError) as exc:
        print(f"opta-lmx: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _convert(args: argparse.Namespace) -> int:
    from huggingface_hub.utils import tqdm

    from opta_lmx.store.convert import convert

    bar = None if args.quiet else tqdm(desc=f"importing {args.src.name}", unit="tensor", total=0)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    say = (lambda _: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    try:
        path = convert(args.src, args.dst, args.bits, args.group_size, args.dtype, progress, say, args.replace)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {path}")
    return 0


def _pull(args: argparse.Namespace, context: StoreContext) -> int:
    from huggingface_hub.utils import tqdm

    from opta_lmx.store.pull import Pull, PullCancelled, PullStatus

    bar = tqdm(desc=args.repo, unit="B", unit_scale=True, unit_divisor=1024, total=0)

    def progress(status: PullStatus) -> None:
        if status.total_bytes and bar.total != status.total_bytes:
            bar.total = status.total_bytes
            bar.refresh()
        bar.update(status.done_bytes - bar.n)

    pull = Pull(args.repo, context.data_dir / "models", args.quant, on_progress=progress)
    try:
        with _sigint_cancels(pull):
            path = pull.run()
    except (PullCancelled, KeyboardInterrupt):
        bar.close()
        print(f"opta-lmx: {pull.status.message}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    print(f"{pull.repo_id}: {path}")
    _tell_server(context, f"serving it as {pull.repo_id}")
    return 0


@contextmanager
def _sigint_cancels(pull: Pull) -> Iterator[None]:
    """The first Ctrl-C cancels the pull where it is (a resumable partial stays); a second one
    interrupts at once."""

    def cancel(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        pull.cancel()

    previous = signal.signal(signal.SIGINT, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _remove(args: argparse.Namespace, context: StoreContext) -> int:
    """Through the running server's supervisor when there is one (it knows what is loaded, and
    no load can start while it deletes); else here."""
    from opta_lmx.proto import CommandResult, RemoveModel
    from opta_lmx.store.remove import remove_model

    reply = _ask_server(context, RemoveModel(args.name), timeout_ms=120_000)
    if reply is None:
        model = find(context.inventory(), args.name)
        remove_model(model, lambda m: [], context.hf_cache)
        print(f"removed {model.name} ({model.path})")
        return 0
    assert isinstance(reply, CommandResult)
    if not reply.ok:
        raise ModelStoreError(reply.message)
    print(reply.message)
    print(f"the running server is no longer serving {args.name}")
    return 0


def _models(args: argparse.Namespace, context: StoreContext) -> int:
    models = context.inventory()
    states = _server_states(context)
    if args.json:
        for m in models:
            record = {k: str(v) if isinstance(v, Path) else v for k, v in vars(m).items()}
            print(json.dumps({**record, "loaded": states.get(m.name) == "RUNNING"}))
        return 0
    rows = [
        (
            m.name,
            m.format,
            m.architecture,
            _count(m.parameters),
            _bytes(m.size),
            m.quantization,
            str(m.context_length or "-"),
            ("yes" if states.get(m.name) == "RUNNING" else "no") if states else "-",
        )
        for m in models
    ]
    header = ("NAME", "FORMAT", "ARCH", "PARAMS", "SIZE", "QUANT", "CONTEXT", "LOADED")
    for line in _table(header, rows):
        print(line)
    if not models:
        print("(no models found: `opta-lmx pull ORG/NAME` downloads one)", file=sys.stderr)
    return 0


# -- a running server --------------------------------------------------------------------------


def _ask_server(context: StoreContext, request: ControlRequest, timeout_ms: int = 5000) -> ControlReply | None:
    """The running server's supervisor's reply, None when no server runs."""
    from opta_lmx.ctl import Client, NotRunning

    try:
        client = Client(context.data_dir)
    except NotRunning:
        return None
    try:
        return client.call(request, timeout_ms=timeout_ms)
    except NotRunning:
        return None
    finally:
        client.close()


def _server_states(context: StoreContext) -> dict[str, str]:
    """Each model's state in the running server, {} when none runs."""
    from opta_lmx.proto import GetStatus, StatusReply

    reply = _ask_server(context, GetStatus())
    return {s.name: s.state for s in reply.models} if isinstance(reply, StatusReply) else {}


def _tell_server(context: StoreContext, what: str) -> None:
    """Have a running server look at the disk again; say so."""
    from opta_lmx.proto import CommandResult, Rescan

    reply = _ask_server(context, Rescan(), timeout_ms=60_000)
    if isinstance(reply, CommandResult) and reply.ok and context.config.server.serve_local_models:
        print(f"the running server is {what}")


# -- formatting --------------------------------------------------------------------------------


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> Iterator[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        yield "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _count(n: int | None) -> str:
    if not n:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
