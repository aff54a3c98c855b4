"""Where the processes of one running service meet: socket addresses and files in its runtime dir.

ipc:// paths must stay short (about 103 bytes on macOS, 107 on Linux), so the runtime dir is a
fresh directory under ``$XDG_RUNTIME_DIR`` or ``/tmp``; the data dir records where it is so that
``lmxctl`` can find a running supervisor.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path

import zmq

# A gateway exits with this when it cannot listen: restarting it would not help.
EXIT_CANNOT_LISTEN = 78


class Runtime:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def create(cls) -> Runtime:
        base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
        if not os.path.isdir(base) or not os.access(base, os.W_OK):
            base = "/tmp"
        directory = Path(tempfile.mkdtemp(prefix="opta-lmx-", dir=base))
        runtime = cls(directory)
        if len(runtime.data_address) - len("ipc://") >= zmq.IPC_PATH_MAX_LEN:
            raise OSError(f"runtime dir {directory} is too long for ipc:// sockets")
        return runtime

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.directory / name}"

    @property
    def data_address(self) -> str:
        """Gateway ROUTER, workers' DEALERs connect: the data path."""
        return self._ipc("data.sock")

    @property
    def control_address(self) -> str:
        """Supervisor ROUTER for lmxctl and the gateway."""
        return self._ipc("control.sock")

    @property
    def events_address(self) -> str:
        """Supervisor PUB of ModelStatus events."""
        return self._ipc("events.sock")

    @property
    def workers_address(self) -> str:
        """Supervisor ROUTER for workers' Ready/heartbeats."""
        return self._ipc("workers.sock")

    @property
    def config_path(self) -> Path:
        """The effective config (JSON) the supervisor hands to its children."""
        return self.directory / "config.json"


def control_address_file(data_dir: Path) -> Path:
    """Written by a running supervisor: the address of its control socket."""
    return data_dir / "supervisor.addr"


def exit_on_parent_death(fd: int, who: str) -> None:
    """Exit as soon as the supervisor's end of the pipe closes (it died, even by SIGKILL)."""

    def watch() -> None:
        while True:
            try:
                if not os.read(fd, 1):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        print(f"{who}: supervisor is gone, exiting", file=sys.stderr, flush=True)
        os._exit(0)

    threading.Thread(target=watch, name="parent-death", daemon=True).start()
