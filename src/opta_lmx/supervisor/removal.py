"""``RemoveModel``: a local model's files deleted by the supervisor, which knows whether a worker
has them loaded.

The check and the deletion happen under the admission lock, the one every load takes before it
starts a worker: no load can begin between "not loaded" and the files going. The model's entries
are dropped before the lock is released (a request for it then gets model_not_found, not a
worker failing on missing files), and the disk is scanned again after.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from opta_lmx.errors import LocalModelNotFound, ModelInUse, ModelStoreError
from opta_lmx.proto import CommandResult
from opta_lmx.supervisor.states import State

if TYPE_CHECKING:
    from opta_lmx.supervisor.main import Supervisor
    from opta_lmx.supervisor.worker_process import WorkerProcess

# A worker in these states has no process and none is about to start.
_AT_REST = (State.STOPPED, State.EXITED, State.FATAL)


async def remove_model(supervisor: Supervisor, name: str) -> CommandResult:
    """Delete the local model ``name``: ``model_not_found``, ``model_loaded`` (409) while a
    worker serving its files is alive, loading or draining, ``model_configured`` for a model the
    config file names; then rescan."""
    store = supervisor.store
    if store is None:
        return CommandResult(ok=False, message="this server has no model store", code="unsupported")
    async with supervisor.admission:
        try:
            model = await asyncio.to_thread(store.find, supervisor.configured, name)
        except LocalModelNotFound as exc:
            return CommandResult(ok=False, message=str(exc), code="model_not_found")
        users = [w for w in supervisor.workers.values() if _same_file(w.model.path, model.path)]
        loaded = [w.name for w in users if _in_use(w)]
        try:
            await asyncio.to_thread(store.remove, model, loaded)
        except ModelInUse as exc:
            return CommandResult(ok=False, message=str(exc), code="model_loaded")
        except ModelStoreError as exc:
            code = "model_configured" if model.source == "config" else "remove_failed"
            return CommandResult(ok=False, message=str(exc), code=code)
        except OSError as exc:
            return CommandResult(ok=False, message=f"cannot delete {model.path}: {exc}", code="remove_failed")
        for worker in users:
            supervisor.workers.pop(worker.name, None)
            supervisor.publish_removed(worker.name)
    await supervisor.rescan()
    return CommandResult(ok=True, message=f"removed {model.name} ({model.path})")


def _in_use(worker: WorkerProcess) -> bool:
    return worker.alive or worker.state not in _AT_REST


def _same_file(configured: str, path: Path) -> bool:
    return Path(configured).expanduser().resolve() == path.resolve()
