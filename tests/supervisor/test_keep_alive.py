"""A request's keep-alive (the ``KeepAlive`` control command) on a worker, without processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from opta_lmx.config import ModelConfig, SupervisorConfig
from opta_lmx.supervisor.reports import model_status
from opta_lmx.supervisor.spawn import DeathPipe
from opta_lmx.supervisor.worker_process import WorkerAddresses, WorkerProcess


@pytest.fixture
def death() -> Iterator[DeathPipe]:
    pipe = DeathPipe()
    yield pipe
    pipe.close()


def worker(death: DeathPipe, tmp_path: Path, **model: object) -> WorkerProcess:
    config = ModelConfig(name="m", path="/nowhere", **model)  # type: ignore[arg-type]
    return WorkerProcess(
        config, SupervisorConfig(), WorkerAddresses("", ""), death, tmp_path, lambda w: None, lambda i, c: None
    )


async def test_a_requests_keep_alive_overrides_the_config_until_the_model_stops(
    death: DeathPipe, tmp_path: Path
) -> None:
    process = worker(death, tmp_path, keep_alive=600)
    assert model_status(process, 1).keep_alive == 600
    process.last_used -= 100
    process.set_keep_alive(0)
    status = model_status(process, 2)
    assert status.keep_alive == 0
    assert abs(status.last_used - time.time()) < 1  # the coming request counts as activity, in wall-clock time
    await process.stop("unloaded")
    assert process.keep_alive == 600  # the next load starts from the config again


def test_a_pinned_model_ignores_keep_alive(death: DeathPipe, tmp_path: Path) -> None:
    process = worker(death, tmp_path, keep_alive=5, pinned=True)
    process.set_keep_alive(0)
    assert process.keep_alive == -1 and model_status(process, 1).keep_alive == -1
