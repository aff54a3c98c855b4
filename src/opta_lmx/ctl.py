"""``lmxctl``: talk to a running supervisor over its control socket (supervisorctl-style).

    lmxctl status [NAME]     one line per model; exit 0 all running, 3 some not running, 4 unknown

Exit 1 with a message when no supervisor is running.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import msgspec
import zmq

from opta_lmx.config import default_data_dir
from opta_lmx.proto import ControlReply, ControlRequest, GetStatus, ModelStatus, StatusReply
from opta_lmx.runtime import control_address_file

EXIT_NOT_RUNNING = 1
EXIT_SOME_STOPPED = 3
EXIT_UNKNOWN_NAME = 4
_TIMEOUT_MS = 5000


class NotRunning(Exception):
    pass


def request(data_dir: Path, message: ControlRequest) -> ControlReply:
    try:
        address = control_address_file(data_dir).read_text().strip()
    except OSError:
        raise NotRunning(f"no supervisor is running (no {control_address_file(data_dir)})") from None
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        sock.send(msgspec.msgpack.encode(message))
        if not sock.poll(_TIMEOUT_MS):
            raise NotRunning(f"the supervisor at {address} does not answer")
        return msgspec.msgpack.decode(sock.recv(), type=ControlReply)
    finally:
        sock.close()
        context.term()


def status_line(status: ModelStatus, width: int) -> str:
    """supervisord's format: name, state, description."""
    if status.state == "RUNNING":
        uptime = int(time.time() - status.started_at)
        hours, rest = divmod(uptime, 3600)
        desc = f"pid {status.pid}, uptime {hours}:{rest // 60:02d}:{rest % 60:02d}"
    else:
        desc = status.description
    return f"{status.name:<{width}}{status.state:<10}{desc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmxctl", description="control a running Opta-LMX")
    parser.add_argument("--data-dir", type=Path, default=None, help="the server's data directory")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="state of every model (or one)")
    status.add_argument("name", nargs="?")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    try:
        reply = request(data_dir, GetStatus(name=args.name))
    except NotRunning as exc:
        print(f"lmxctl: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    assert isinstance(reply, StatusReply)
    if args.name and not reply.models:
        print(f"{args.name}: ERROR (no such process)")
        return EXIT_UNKNOWN_NAME
    width = max((len(m.name) for m in reply.models), default=0) + 3
    for model in reply.models:
        print(status_line(model, width))
    return 0 if all(m.state == "RUNNING" for m in reply.models) else EXIT_SOME_STOPPED


if __name__ == "__main__":
    raise SystemExit(main())
