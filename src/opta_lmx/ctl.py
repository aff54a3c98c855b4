"""``lmxctl``: control a running Opta-LMX over the supervisor's control socket (supervisorctl-style).

    lmxctl status [-v] [NAME]    one line per model; exit 0 all RUNNING, 3 some not, 4 unknown NAME
    lmxctl start|stop|restart NAME
    lmxctl kill NAME [SIGNAL]    signal the worker's process group (default KILL; it is restarted)
    lmxctl tail [-f] NAME        the worker's log
    lmxctl reload                re-read the config: add, remove, replace changed models
    lmxctl shutdown              stop the whole service

Exit 1 with a message (no traceback) when no supervisor is running; 2 when a command fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import msgspec
import zmq

from opta_lmx.config import default_data_dir
from opta_lmx.proto import (
    CommandResult,
    ControlReply,
    ControlRequest,
    GetStatus,
    ModelStatus,
    Reload,
    Restart,
    ShutdownServer,
    Signal,
    Start,
    StatusReply,
    Stop,
    Tail,
    TailReply,
)
from opta_lmx.runtime import control_address_file

EXIT_NOT_RUNNING = 1
EXIT_FAILED = 2
EXIT_SOME_STOPPED = 3
EXIT_UNKNOWN_NAME = 4
_QUICK_MS = 5000
# start/restart wait for the model to load; the supervisor bounds that by its load_timeout.
_SLOW_MS = 15 * 60 * 1000
_FOLLOW_INTERVAL = 0.5


class NotRunning(Exception):
    pass


class Client:
    def __init__(self, data_dir: Path) -> None:
        try:
            self.address = control_address_file(data_dir).read_text().strip()
        except OSError:
            raise NotRunning(f"no supervisor is running (no {control_address_file(data_dir)})") from None
        self._context = zmq.Context()
        self._sock = self._context.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(self.address)

    def call(self, message: ControlRequest, timeout_ms: int = _QUICK_MS) -> ControlReply:
        self._sock.send(msgspec.msgpack.encode(message))
        if not self._sock.poll(timeout_ms):
            raise NotRunning(f"the supervisor at {self.address} does not answer")
        return msgspec.msgpack.decode(self._sock.recv(), type=ControlReply)

    def close(self) -> None:
        self._sock.close()
        self._context.term()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def details_lines(status: ModelStatus, width: int) -> str:
    """Where the last start's time went, and what the memory holds (``status -v``)."""
    first = f"{status.first_token_seconds:.2f}s" if status.first_token_seconds else "-"
    timings = (
        f"{'':<{width}}spawn {status.spawn_seconds:.2f}s, imports {status.import_seconds:.2f}s, "
        f"load {status.load_seconds:.2f}s, first request's time to first token {first}"
    )
    if status.state != "RUNNING":
        return timings
    return timings + (
        f"\n{'':<{width}}memory: uss {_mib(status.memory)}, mlx active {_mib(status.mlx_active)}, "
        f"mlx cache {_mib(status.mlx_cache)}"
    )


def status_line(status: ModelStatus, width: int) -> str:
    """supervisord's format (name, state, description), plus memory and requests in flight."""
    if status.state == "RUNNING":
        uptime = int(time.time() - status.started_at)
        hours, rest = divmod(uptime, 3600)
        desc = f"pid {status.pid}, uptime {hours}:{rest // 60:02d}:{rest % 60:02d}"
        desc += f", mem {_mib(status.memory)}, {status.active_requests} in flight"
    else:
        desc = status.description
    return f"{status.name:<{width}}{status.state:<10}{desc}"


def _status(client: Client, name: str | None, verbose: bool = False) -> int:
    reply = client.call(GetStatus(name=name))
    assert isinstance(reply, StatusReply)
    if name and not reply.models:
        print(f"{name}: ERROR (no such process)")
        return EXIT_UNKNOWN_NAME
    width = max((len(m.name) for m in reply.models), default=0) + 3
    for model in reply.models:
        print(status_line(model, width))
        if verbose:
            print(details_lines(model, width))
    return 0 if all(m.state == "RUNNING" for m in reply.models) else EXIT_SOME_STOPPED


def _result(reply: ControlReply) -> int:
    assert isinstance(reply, CommandResult)
    print(reply.message)
    if reply.ok:
        return 0
    return EXIT_UNKNOWN_NAME if reply.code == "model_not_found" else EXIT_FAILED


def _tail(client: Client, name: str, follow: bool) -> int:
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
    parser.add_argument("--data-dir", type=Path, default=None, help="the server's data directory")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="state of every model (or one)")
    status.add_argument(
        "-v", "--verbose", action="store_true", help="add where start-up time went and what the memory holds"
    )
    status.add_argument("name", nargs="?")
    for verb in ("start", "stop", "restart"):
        commands.add_parser(verb, help=f"{verb} a model's worker").add_argument("name")
    kill = commands.add_parser("kill", help="signal a model's worker (default KILL)")
    kill.add_argument("name")
    kill.add_argument("signal", nargs="?", default="KILL")
    tail = commands.add_parser("tail", help="a model's worker log")
    tail.add_argument("-f", "--follow", action="store_true")
    tail.add_argument("name")
    commands.add_parser("reload", help="re-read the config file")
    commands.add_parser("shutdown", help="stop the service")
    return parser


def _run(client: Client, args: argparse.Namespace) -> int:
    match args.command:
        case "status":
            return _status(client, args.name, args.verbose)
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
        case "shutdown":
            return _result(client.call(ShutdownServer()))
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        client = Client(args.data_dir or default_data_dir())
    except NotRunning as exc:
        print(f"lmxctl: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        return _run(client, args)
    except NotRunning as exc:
        print(f"lmxctl: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
