"""``lmxctl``: control a running Opta-LMX (supervisorctl-style), on this machine or over HTTP.

    lmxctl status [-v] [NAME]    one line per model; exit 0 all RUNNING, 3 some not, 4 unknown NAME
    lmxctl models [NAME]         configured models: state, engine, memory estimate, path, settings
    lmxctl memory [MODEL]        budget, each worker's use, and what loading MODEL would take
    lmxctl start|stop|restart NAME
    lmxctl kill NAME [SIGNAL]    signal the worker's process group (default KILL; it is restarted)
    lmxctl tail [-f] NAME        the worker's log
    lmxctl reload                re-read the config: add, remove, replace changed models
    lmxctl pull REPO[@REV] [--quant Q]   download a model from the Hugging Face hub (Ctrl-C cancels)
    lmxctl rm NAME               delete a local model from disk (refused while it is loaded)
    lmxctl shutdown              stop the whole service (on this machine only)

By default lmxctl talks to the supervisor's control socket (found in the data directory). With
``--url http://HOST:PORT`` (or ``$LMX_URL``) it uses that server's admin API instead, sending
``--key`` (or ``$LMX_ADMIN_KEY``) as the admin key; the output is the same.

Exit 1 with a message (no traceback) when no server answers; 2 when a command fails or is refused;
130 when a pull was cancelled.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Protocol

from opta_lmx.config import default_data_dir
from opta_lmx.ctl import render
from opta_lmx.ctl.local import Client, NotRunning
from opta_lmx.ctl.pull import PullRefused, pull
from opta_lmx.ctl.remote import HttpClient, Refused, Unsupported
from opta_lmx.proto import (
    CommandResult,
    ControlReply,
    ControlRequest,
    GetMemory,
    GetModels,
    GetStatus,
    MemoryReply,
    ModelsReply,
    Reload,
    RemoveModel,
    Restart,
    ShutdownServer,
    Signal,
    Start,
    StatusReply,
    Stop,
    Tail,
    TailReply,
)

EXIT_NOT_RUNNING = 1
EXIT_FAILED = 2
EXIT_SOME_STOPPED = 3
EXIT_UNKNOWN_NAME = 4
# start/restart wait for the model to load; the supervisor bounds that by its load_timeout.
_SLOW_MS = 15 * 60 * 1000
_FOLLOW_INTERVAL = 0.5


class Control(Protocol):
    """The local socket's client or the admin API's: the same messages, the same replies."""

    def call(self, message: ControlRequest, timeout_ms: int = ...) -> ControlReply: ...

    def close(self) -> None: ...


def _status(client: Control, name: str | None, verbose: bool = False) -> int:
    reply = client.call(GetStatus(name=name))
    assert isinstance(reply, StatusReply)
    if name and not reply.models:
        print(f"{name}: ERROR (no such process)")
        return EXIT_UNKNOWN_NAME
    width = max((len(m.name) for m in reply.models), default=0) + 3
    for model in reply.models:
        print(render.status_line(model, width))
        if verbose:
            print(render.details_lines(model, width))
    return 0 if all(m.state == "RUNNING" for m in reply.models) else EXIT_SOME_STOPPED


def _models(client: Control, name: str | None) -> int:
    reply = client.call(GetModels(name=name))
    if isinstance(reply, CommandResult):
        return _result(reply)
    assert isinstance(reply, ModelsReply)
    print(render.models_table(reply.models))
    return 0


def _memory(client: Control, model: str | None) -> int:
    reply = client.call(GetMemory(model=model))
    if isinstance(reply, CommandResult):
        return _result(reply)
    assert isinstance(reply, MemoryReply)
    print(render.memory_report(reply))
    return 0


def _result(reply: ControlReply) -> int:
    assert isinstance(reply, CommandResult)
    print(reply.message)
    if reply.ok:
        return 0
    return EXIT_UNKNOWN_NAME if reply.code == "model_not_found" else EXIT_FAILED


def _tail(client: Control, name: str, follow: bool) -> int:
    offset = -1600
    while True:
        reply = client.call(Tail(name=name, offset=offset))
        if isinstance(reply, CommandResult):
            return _result(reply)
        assert isinstance(reply, TailReply)
        sys.stdout.write(reply.text)
        sys.stdout.flush()
        if not follow:
            return 0
        offset = reply.offset
        time.sleep(_FOLLOW_INTERVAL)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmxctl", description="control a running Opta-LMX")
    parser.add_argument("--data-dir", type=Path, default=None, help="the server's data directory (local control)")
    parser.add_argument(
        "--url", default=None, help="a server's base URL, e.g. http://host:1234: use its admin API ($LMX_URL)"
    )
    parser.add_argument("--key", default=None, help="the server's admin key, with --url ($LMX_ADMIN_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="state of every model (or one)")
    status.add_argument(
        "-v", "--verbose", action="store_true", help="add start-up times, memory, queue and past exits"
    )
    status.add_argument("name", nargs="?")
    commands.add_parser("models", help="configured models and their settings").add_argument("name", nargs="?")
    commands.add_parser("memory", help="the memory budget and use; with MODEL, what loading it takes").add_argument(
        "model", nargs="?"
    )
    for verb in ("start", "stop", "restart"):
        commands.add_parser(verb, help=f"{verb} a model's worker").add_argument("name")
    kill = commands.add_parser("kill", help="signal a model's worker (default KILL)")
    kill.add_argument("name")
    kill.add_argument("signal", nargs="?", default="KILL")
    tail = commands.add_parser("tail", help="a model's worker log")
    tail.add_argument("-f", "--follow", action="store_true")
    tail.add_argument("name")
    commands.add_parser("reload", help="re-read the config file")
    pull_command = commands.add_parser("pull", help="download a model from the Hugging Face hub into the server's data dir")
    pull_command.add_argument("repo", help="ORG/NAME or ORG/NAME@REVISION")
    pull_command.add_argument("--quant", help="for a repository of GGUF files: which quantization (default Q4_K_M)")
    commands.add_parser("rm", help="delete a local model from disk").add_argument("name")
    commands.add_parser("shutdown", help="stop the service")
    return parser


def _run(client: Control, args: argparse.Namespace) -> int:
    match args.command:
        case "status":
            return _status(client, args.name, args.verbose)
        case "models":
            return _models(client, args.name)
        case "memory":
            return _memory(client, args.model)
        case "start":
            return _result(client.call(Start(args.name), _SLOW_MS))
        case "stop":
            return _result(client.call(Stop(args.name), _SLOW_MS))
        case "restart":
            return _result(client.call(Restart(args.name), _SLOW_MS))
        case "kill":
            return _result(client.call(Signal(args.name, args.signal.upper())))
        case "tail":
            return _tail(client, args.name, args.follow)
        case "reload":
            return _result(client.call(Reload(), _SLOW_MS))
        case "pull":
            return pull(client, args.repo, args.quant)
        case "rm":
            return _result(client.call(RemoveModel(args.name), _SLOW_MS))
        case "shutdown":
            return _result(client.call(ShutdownServer()))
    raise AssertionError(args.command)


def _connect(args: argparse.Namespace) -> Control:
    url = args.url or os.environ.get("LMX_URL")
    if url:
        return HttpClient(url, args.key or os.environ.get("LMX_ADMIN_KEY"))
    return Client(args.data_dir or default_data_dir())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        client = _connect(args)
    except NotRunning as exc:
        print(f"lmxctl: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        return _run(client, args)
    except NotRunning as exc:
        print(f"lmxctl: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except (Refused, Unsupported) as exc:
        print(f"lmxctl: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except PullRefused as exc:
        return _result(exc.reply)
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
