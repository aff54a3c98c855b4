"""Loading a model within the memory budget: one admission at a time, idle workers evicted
least recently used first (``memory_policy.admit``), and a load that only busy models stand in
the way of waits a while for room."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from opta_lmx.proto import CommandResult
from opta_lmx.supervisor import memory_policy as policy
from opta_lmx.supervisor.states import State

if TYPE_CHECKING:
    from opta_lmx.supervisor.main import Supervisor
    from opta_lmx.supervisor.worker_process import WorkerProcess

log = logging.getLogger("opta_lmx.supervisor")


async def load(supervisor: Supervisor, worker: WorkerProcess) -> CommandResult:
    """``Supervisor.load``: see there."""
    if worker.state is State.STOPPING:
        settings = supervisor.config.supervisor
        await worker.wait_settled(settings.drain_grace + settings.stop_grace + 5.0)
    deadline = time.monotonic() + supervisor.config.memory.wait_for_room
    need = supervisor.estimate(worker)  # its files do not change while it waits
    while True:
        async with supervisor.admission:
            if supervisor.workers.get(worker.name) is not worker:
                # Removed (its files deleted) or replaced by a reload while this load waited for
                # the lock: starting it would run a model that is no longer served.
                message = f"The model '{worker.name}' is no longer served as it was; ask again."
                return CommandResult(ok=False, message=message, code="model_not_found")
            if worker.alive:
                worker.last_used = time.monotonic()
                return CommandResult(ok=True, message=f"{worker.name}: {worker.state.value}")
            pending = supervisor.stopping.get(worker.name)
            if pending is not None:
                await pending
            loaded = supervisor.admission_views(worker)
            budget = supervisor.budget()
            decision = policy.admit(need, loaded, budget, supervisor.config.memory.max_loaded_models)
            if isinstance(decision, policy.Admit):
                began = time.monotonic()
                for victim in decision.evict:
                    await supervisor.workers[victim].stop(f"evicted to make room for {worker.name}", cause="evicted")
                worker.start(decision.evict, time.monotonic() - began if decision.evict else 0.0)
                return CommandResult(ok=True, message=f"{worker.name}: loading")
            if time.monotonic() >= deadline or not any(v.busy and not v.pinned for v in loaded):
                waited = supervisor.config.memory.wait_for_room - (deadline - time.monotonic())
                message = (
                    f"Cannot load '{worker.name}': it needs about {_mib(decision.needed)} and "
                    f"{_mib(decision.available)} of the {_mib(budget)} budget is free ({decision.reason}"
                    + (f", after waiting {waited:.0f}s for one to go idle)." if waited >= 1 else ").")
                )
                log.warning(message)
                return CommandResult(ok=False, message=message, code="insufficient_memory")
        # Outside the lock: other loads (that fit) go on while this one waits for room.
        await asyncio.sleep(supervisor.config.supervisor.heartbeat_interval / 2)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"
