"""A load that waited for the admission lock while its model was removed (the removal holds that
lock) is refused, and starts no worker on files that are gone."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from opta_lmx.config import Config, ModelConfig
from opta_lmx.runtime import Runtime
from opta_lmx.supervisor.main import Supervisor
from opta_lmx.supervisor.states import State


async def test_a_load_waiting_on_a_removal_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    runtime = Runtime.create()
    supervisor = Supervisor(Config(models=[ModelConfig(name="tiny", path=str(tiny_model))]), tmp_path, runtime, None)
    try:
        worker = supervisor.workers["tiny"]
        async with supervisor.admission:  # as removal.remove_model holds it
            load = asyncio.create_task(supervisor.load(worker))
            await asyncio.sleep(0.05)
            assert not load.done()  # waiting for the lock
            supervisor.workers.pop("tiny")
        result = await asyncio.wait_for(load, 5)
        assert (result.ok, result.code) == (False, "model_not_found")
        assert not worker.alive and worker.state is State.STOPPED
    finally:
        supervisor._context.destroy(linger=0)
        shutil.rmtree(runtime.directory, ignore_errors=True)
