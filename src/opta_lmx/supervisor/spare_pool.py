"""One warm spare worker: a process with Python started and the engine imported, but no model.

A load that takes it skips process start-up and imports (about 0.75 s for mlx-lm in a clean
environment, much more on a loaded machine); a replacement is started a little later, so it does
not compete for the CPU with the load that just took the previous one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Callable

from opta_lmx.proto import SPARE_IDENTITY_PREFIX, Shutdown, SpareReady, WorkerCommand
from opta_lmx.supervisor.spawn import DeathPipe, describe_exit, spawn, terminate

log = logging.getLogger("opta_lmx.supervisor")

_QUICK_EXIT = 10.0
_MAX_QUICK_EXITS = 3


class SparePool:
    def __init__(
        self,
        control_address: str,
        data_address: str,
        death: DeathPipe,
        log_path: Path,
        send: Callable[[str, WorkerCommand], None],
        replace_delay: float,
        env: dict[str, str] | None = None,
    ) -> None:
        self._env = env  # a worker's environment (a spare becomes one)
        self._control_address = control_address
        self._data_address = data_address
        self._death = death
        self._log_path = log_path
        self._send = send
        self._replace_delay = replace_delay
        self._number = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = False
        self._taken = asyncio.Event()

    @property
    def identity(self) -> str:
        return f"{SPARE_IDENTITY_PREFIX}{self._number}"

    def take(self) -> tuple[asyncio.subprocess.Process, str] | None:
        """The waiting spare (its process and identity), or None when none is ready."""
        proc = self._proc
        if not self._ready or proc is None or proc.returncode is not None:
            return None
        identity = self.identity
        self._proc, self._ready = None, False
        self._taken.set()
        return proc, identity

    def on_report(self, number: int, report: object) -> None:
        if number == self._number and isinstance(report, SpareReady):
            self._ready = True
            log.info("warm spare ready (pid %d, imports %.2fs)", report.pid, report.import_seconds)

    async def keep(self) -> None:
        """Keep one spare; give up after repeated quick exits (something is broken, say so once)."""
        quick_exits = 0
        await asyncio.sleep(self._replace_delay)
        while quick_exits < _MAX_QUICK_EXITS:
            self._number += 1
            self._ready = False
            self._taken.clear()
            began = time.monotonic()
            self._proc = proc = await spawn(self._argv(), self._log_path, self._death, self._env)
            exited = asyncio.ensure_future(proc.wait())
            taken = asyncio.ensure_future(self._taken.wait())
            await asyncio.wait({exited, taken}, return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()
            taken.cancel()
            if not self._taken.is_set():
                log.warning("warm spare %s; starting another", describe_exit(proc.returncode or 0))
                quick_exits = quick_exits + 1 if time.monotonic() - began < _QUICK_EXIT else 0
            await asyncio.sleep(self._replace_delay)
        log.error("warm spares keep exiting (see %s); loads start fresh processes", self._log_path)

    async def stop(self, grace: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if self._ready:
                self._send(self.identity, Shutdown(drain=False))
            await terminate(proc, grace)

    def _argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "opta_lmx.worker",
            "--spare",
            str(self._number),
            "--data",
            self._data_address,
            "--control",
            self._control_address,
            "--death-fd",
            str(self._death.read_fd),
        ]
