"""Starting and killing child processes: own session, parent-death pipe, group kill."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import IO

import psutil


class DeathPipe:
    """A pipe whose write end only the supervisor holds: children see EOF when it dies."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()

    def close(self) -> None:
        for fd in (self.read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


async def spawn(
    argv: list[str], log: Path | None, death: DeathPipe, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own session (so its whole group can be killed) with the death pipe,
    in ``env`` (None: this process's environment)."""
    out: IO[bytes] | None = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            pass_fds=(death.read_fd,),
            env=env,
        )
    finally:
        if out is not None:
            out.close()


async def terminate(proc: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; returns the exit status."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            pass
    signal_group(proc.pid, signal.SIGKILL)
    return await proc.wait()


def signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def log_tail(log: Path, lines: int = 3, max_bytes: int = 4096) -> str:
    """The last lines of a child's log, for status descriptions."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def process_tree_uss(pid: int) -> int:
    """The unique memory (USS) of a process and its descendants; 0 once it is gone."""
    try:
        root = psutil.Process(pid)
        return sum(_uss(p) for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def _uss(proc: psutil.Process) -> int:
    try:
        return proc.memory_full_info().uss
    except psutil.Error:
        return 0
