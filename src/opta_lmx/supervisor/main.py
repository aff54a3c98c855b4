"""The supervisor: the service's main process, owner of every child.

It binds the control ROUTER (lmxctl, gateway), the events PUB and the workers ROUTER, spawns the
gateway and the workers, loads models on demand within the memory budget, polices liveness and
memory, and turns SIGTERM/SIGINT into an orderly stop: gateway first (it ends open streams
itself), then workers (group SIGTERM, SIGKILL after grace).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import sys
from pathlib import Path
from typing import Callable, Mapping

import msgspec
import psutil
import zmq
import zmq.asyncio

from opta_lmx.config import Config, ModelConfig, budget_bytes, with_local_models
from opta_lmx.engine_choice import gguf_file, resolve_engine
from opta_lmx.proto import SPARE_IDENTITY_PREFIX, CommandResult, ModelStatus, PullJob, WorkerCommand, WorkerReport
from opta_lmx.runtime import EXIT_CANNOT_LISTEN, Runtime, control_address_file
from opta_lmx.supervisor import admission
from opta_lmx.supervisor import memory_policy as policy
from opta_lmx.supervisor.blas import preload_library, worker_environment
from opta_lmx.supervisor.control import serve_control
from opta_lmx.supervisor.gguf_header import kv_cache_bytes
from opta_lmx.supervisor.model_store import ModelStore
from opta_lmx.supervisor.policing import Policing
from opta_lmx.supervisor.pull_jobs import PullJobs
from opta_lmx.supervisor.reports import model_status
from opta_lmx.supervisor.spare_pool import SparePool
from opta_lmx.supervisor.spawn import DeathPipe, describe_exit, spawn, terminate
from opta_lmx.supervisor.states import State
from opta_lmx.supervisor.worker_process import WorkerAddresses, WorkerProcess

log = logging.getLogger("opta_lmx.supervisor")

_GATEWAY_RESTART_DELAY = 1.0
_GATEWAY_STOP_GRACE = 5.0
# Start the warm spare this long after start-up or after one was taken, so that its imports do not
# compete for the CPU with the loads in progress.
_SPARE_DELAY = 3.0

ConfigSource = Callable[[], Config]


class Supervisor:
    def __init__(
        self,
        config: Config,
        data_dir: Path,
        runtime: Runtime,
        reload_source: ConfigSource | None,
        store: ModelStore | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.runtime = runtime
        self.reload_source = reload_source
        # The models on disk: served by name, pulled, removed (None: the configured ones only).
        self.store = store
        # What the config file says; ``config`` is that plus the models found on disk.
        self.configured = config
        self.config = self._effective(config)
        self._death = DeathPipe()
        self._context = zmq.asyncio.Context()
        self._control = self._bind(zmq.ROUTER, runtime.control_address)
        self._events = self._bind(zmq.PUB, runtime.events_address)
        self._reports = self._bind(zmq.ROUTER, runtime.workers_address)
        self._encoder = msgspec.msgpack.Encoder()
        self._seq = 0
        self.config_version = 0
        self._addresses = WorkerAddresses(runtime.data_address, runtime.workers_address)
        blas = preload_library(config.supervisor.preload_blas)
        if blas is not None:
            log.info("workers preload %s (supervisor.preload_blas)", blas)
        self._worker_env = worker_environment(blas)
        self.spares = SparePool(
            runtime.workers_address,
            runtime.data_address,
            self._death,
            data_dir / "logs" / "spare.log",
            self.send_to_worker,
            replace_delay=_SPARE_DELAY,
            env=self._worker_env,
        )
        self.workers: dict[str, WorkerProcess] = {m.name: self._make_worker(m) for m in self.config.models}
        self._admission = asyncio.Lock()
        self._reloading = asyncio.Lock()
        self.pulls = PullJobs(store, self.publish_pull, lambda: self._seq, self._pulled) if store else None
        self._stopping_tasks: dict[str, asyncio.Task[None]] = {}
        self._policing = Policing(self)
        self._stopping = asyncio.Event()
        self._gateway: asyncio.subprocess.Process | None = None
        self._exit_code = 0

    def _bind(self, kind: int, address: str) -> zmq.asyncio.Socket:
        sock = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(address)
        return sock

    def _make_worker(self, model: ModelConfig) -> WorkerProcess:
        return WorkerProcess(
            model,
            self.config.supervisor,
            self._addresses,
            self._death,
            self.data_dir / "logs",
            self.publish,
            self.send_to_worker,
            self.spares.take if self.config.supervisor.warm_spare else lambda: None,
            self.data_dir / "kv",
            self._worker_env,
        )

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        self.runtime.config_path.write_bytes(msgspec.json.encode(self.config))
        control_file = control_address_file(self.data_dir)
        control_file.parent.mkdir(parents=True, exist_ok=True)
        control_file.write_text(self.runtime.control_address + "\n")
        tasks = [
            asyncio.create_task(serve_control(self, self._control), name="control"),
            asyncio.create_task(self._serve_reports(), name="reports"),
            asyncio.create_task(self._policing.forever(), name="police"),
            asyncio.create_task(self._load_on_start(), name="load-on-start"),
            *([asyncio.create_task(self.spares.keep(), name="spare")] if self.config.supervisor.warm_spare else []),
            asyncio.create_task(self._keep_gateway(), name="gateway"),
        ]
        await self._stopping.wait()
        await self._shutdown(tasks)
        if control_file.exists() and control_file.read_text().strip() == self.runtime.control_address:
            control_file.unlink(missing_ok=True)
        return self._exit_code

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        log.info("stopping")
        tasks[-1].cancel()  # the gateway keeper: no restart from here on
        if self._gateway is not None:
            await terminate(self._gateway, _GATEWAY_STOP_GRACE)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.pulls is not None:
            self.pulls.cancel_all()
        await asyncio.gather(
            self.spares.stop(self.config.supervisor.stop_grace),
            *(w.stop("server shutdown", drain=False, cause="shutdown") for w in self.workers.values()),
        )
        self._context.destroy(linger=0)
        self._death.close()
        shutil.rmtree(self.runtime.directory, ignore_errors=True)
        log.info("stopped")

    # -- events and worker commands --------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._seq

    def status_of(self, worker: WorkerProcess) -> ModelStatus:
        return msgspec.structs.replace(model_status(worker, self._seq), config_version=self.config_version)

    def publish(self, worker: WorkerProcess) -> None:
        self._seq += 1
        self._events.send(self._encoder.encode(self.status_of(worker)))

    def publish_removed(self, name: str) -> None:
        self._seq += 1
        removed = ModelStatus(name, State.STOPPED.value, self._seq, removed=True, config_version=self.config_version)
        self._events.send(self._encoder.encode(removed))

    def publish_pull(self, job: PullJob) -> None:
        self._events.send(self._encoder.encode(job))

    def statuses(self) -> list[ModelStatus]:
        return [self.status_of(w) for w in self.workers.values()]

    def send_to_worker(self, identity: str, command: WorkerCommand) -> None:
        try:
            self._reports.send_multipart([identity.encode(), self._encoder.encode(command)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("cannot reach worker %s: %s", identity, exc)

    async def _serve_reports(self) -> None:
        decoder = msgspec.msgpack.Decoder(WorkerReport)
        while True:
            identity, payload = await self._reports.recv_multipart()
            name, _, generation = identity.decode().rpartition("#")
            if not generation.isdigit():
                continue
            try:
                report = decoder.decode(payload)
            except msgspec.DecodeError as exc:
                log.warning("%s: undecodable report: %s", name, exc)
                continue
            if f"{name}#" == SPARE_IDENTITY_PREFIX:
                self.spares.on_report(int(generation), report)
            elif (worker := self.workers.get(name)) is not None:
                worker.on_report(int(generation), report)

    # -- loading within the budget ---------------------------------------------------------

    @property
    def admission(self) -> asyncio.Lock:
        """Held by every load from its decision until its worker started: whoever holds it knows
        no worker starts meanwhile."""
        return self._admission

    def estimate(self, worker: WorkerProcess) -> int:
        """The admission estimate of ``worker``'s memory need, in bytes."""
        memory = self.config.memory
        model = worker.model
        kv = memory.kv_headroom
        if resolve_engine(model.engine, model.path) == "gguf":  # its KV caches are allocated at load
            try:
                kv = kv_cache_bytes(gguf_file(model.path), model.options.slots, model.options.slot_context) or kv
            except ValueError:  # no single model file: the worker's load will say so
                pass
        return policy.estimate_need(Path(model.path), memory.weights_factor, kv, memory.process_overhead)

    def budget(self) -> int:
        return budget_bytes(self.config.memory, psutil.virtual_memory().total)

    def limits(self) -> policy.Limits:
        """The budget and the soft and hard limits in bytes, as policing applies them."""
        budget, memory = self.budget(), self.config.memory
        return policy.Limits(budget, int(budget * memory.soft_limit), int(budget * memory.hard_limit), memory.hard_readings)

    def admission_views(self, worker: WorkerProcess, counted: Mapping[str, int] | None = None) -> list[policy.WorkerView]:
        """The loaded workers other than ``worker`` as admission counts them: each the larger of
        its measured use and its estimate (``counted``, by name, when the caller has just
        measured them); those being stopped already are left out."""
        return [
            w.view(counted[w.name] if counted is not None else max(w.memory_used(), self.estimate(w)))
            for w in self.workers.values()
            if w.alive and w is not worker and w.name not in self._stopping_tasks
        ]

    async def load(self, worker: WorkerProcess) -> CommandResult:
        """Start ``worker`` if its estimated need fits, evicting idle workers LRU-first to make room.

        One admission at a time, so two loads never count the same free memory; a worker that is
        already alive is left alone, so concurrent first requests share one load. A worker that is
        draining (evicted, unloaded when idle, swapped) is waited for, then loaded again: the
        request that wants it is served, not refused because it came during the drain. When only
        busy models stand in the way, the load waits up to ``[memory] wait_for_room`` seconds for
        one of them to go idle, then is refused.
        """
        return await admission.load(self, worker)

    async def _load_on_start(self) -> None:
        for worker in list(self.workers.values()):
            if worker.model.load_on_start:
                result = await self.load(worker)
                if not result.ok:
                    worker.description = result.message
                    self.publish(worker)

    # -- policing ----------------------------------------------------------------------------

    @property
    def stopping(self) -> Mapping[str, asyncio.Task[None]]:
        """The workers being stopped in the background, by name."""
        return self._stopping_tasks

    def stop_in_background(self, worker: WorkerProcess, reason: str, cause: str) -> None:
        if worker.name in self._stopping_tasks:
            return
        task = asyncio.create_task(worker.stop(reason, cause=cause), name=f"stop:{worker.name}")
        self._stopping_tasks[worker.name] = task
        task.add_done_callback(lambda _: self._stopping_tasks.pop(worker.name, None))

    # -- reload ------------------------------------------------------------------------------

    def _effective(self, config: Config) -> Config:
        """``config`` with the models on disk added (``serve_local_models``), configured ones winning."""
        if not config.server.serve_local_models or self.store is None:
            return config
        try:
            local = self.store.local_models(config)
        except Exception:  # a scan failure must not stop the configured models from serving
            log.exception("scanning for local models failed")
            local = []
        return with_local_models(config, local)

    async def rescan(self) -> CommandResult:
        """Look for models on disk again (after a pull or a delete) and serve what changed."""
        return await self.reload(self.configured)

    async def _pulled(self, path: Path) -> str:
        """After a pull: rescan, and the name the model at ``path`` is served under ("" if none)."""
        await self.rescan()
        return next((m.name for m in self.config.models if Path(m.path).expanduser().resolve() == path.resolve()), "")

    async def reload(self, configured: Config) -> CommandResult:
        """Apply a new config: add, remove and replace changed models; unchanged workers stay.
        One reload at a time (a pull may finish while an operator reloads)."""
        async with self._reloading:
            return await self._reload(configured)

    async def _reload(self, configured: Config) -> CommandResult:
        new = await asyncio.to_thread(self._effective, configured)
        self.configured = configured
        old = {name: w.model for name, w in self.workers.items()}
        fresh = {m.name: m for m in new.models}
        notes: list[str] = []
        if new.server != self.config.server:
            notes.append("server settings change on restart only")
        self.config = msgspec.structs.replace(new, server=self.config.server)
        self.runtime.config_path.write_bytes(msgspec.json.encode(self.config))
        self.config_version += 1
        for name in [n for n in old if n not in fresh or fresh[n] != old[n]]:
            reason = "removed by reload" if name not in fresh else "changed by reload"
            await self.workers.pop(name).stop(reason, cause="reload")
            self.publish_removed(name)
            notes.append(f"{name}: {'removed' if name not in fresh else 'replaced'}")
        for name, model in fresh.items():
            if name in self.workers:
                continue
            self.workers[name] = worker = self._make_worker(model)
            self.publish(worker)
            notes.append(f"{name}: added" if name not in old else "")
            if model.load_on_start:
                await self.load(worker)
        for worker in self.workers.values():  # aliases and presets may have changed for any model
            self.publish(worker)
        return CommandResult(ok=True, message="; ".join(n for n in notes if n) or "no changes")

    # -- the gateway -------------------------------------------------------------------------

    async def _keep_gateway(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "opta_lmx.gateway",
            "--runtime-dir",
            str(self.runtime.directory),
            "--death-fd",
            str(self._death.read_fd),
        ]
        while True:
            self._gateway = await spawn(argv, None, self._death)
            returncode = await self._gateway.wait()
            if returncode == EXIT_CANNOT_LISTEN:
                log.error("the gateway cannot listen; stopping")
                self._exit_code = 1
                self.request_stop()
                return
            log.error("gateway %s; restarting", describe_exit(returncode))
            await asyncio.sleep(_GATEWAY_RESTART_DELAY)


def run_supervisor(
    config: Config,
    data_dir: Path,
    reload_source: ConfigSource | None = None,
    store: ModelStore | None = None,
) -> int:
    runtime = Runtime.create()
    try:
        return asyncio.run(_main(config, data_dir, runtime, reload_source, store))
    finally:
        shutil.rmtree(runtime.directory, ignore_errors=True)


async def _main(
    config: Config, data_dir: Path, runtime: Runtime, reload_source: ConfigSource | None, store: ModelStore | None
) -> int:
    return await Supervisor(config, data_dir, runtime, reload_source, store).run()


def main() -> int:
    print("use `opta-lmx serve` to start the service", file=sys.stderr)
    return 2
