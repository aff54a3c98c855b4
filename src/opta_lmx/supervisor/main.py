"""The supervisor: the service's main process, owner of every child.

It binds the control ROUTER (lmxctl, gateway), the events PUB and the workers ROUTER, spawns the
gateway and one worker per configured model, and turns SIGTERM/SIGINT into an orderly stop:
gateway first (it ends open streams itself), then workers (group SIGTERM, SIGKILL after grace).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import sys
from pathlib import Path

import msgspec
import zmq
import zmq.asyncio

from opta_lmx.config import Config
from opta_lmx.proto import (
    CommandResult,
    ControlReply,
    ControlRequest,
    GetStatus,
    ModelStatus,
    StatusReply,
    WorkerReport,
)
from opta_lmx.runtime import EXIT_CANNOT_LISTEN, Runtime, control_address_file
from opta_lmx.supervisor.spawn import DeathPipe, describe_exit, spawn, terminate
from opta_lmx.supervisor.worker_process import WorkerAddresses, WorkerProcess

log = logging.getLogger("opta_lmx.supervisor")

_GATEWAY_RESTART_DELAY = 1.0
_GATEWAY_STOP_GRACE = 5.0


class Supervisor:
    def __init__(self, config: Config, data_dir: Path, runtime: Runtime) -> None:
        self._config = config
        self._data_dir = data_dir
        self._runtime = runtime
        self._death = DeathPipe()
        self._context = zmq.asyncio.Context()
        self._control = self._bind(zmq.ROUTER, runtime.control_address)
        self._events = self._bind(zmq.PUB, runtime.events_address)
        self._reports = self._bind(zmq.ROUTER, runtime.workers_address)
        self._encoder = msgspec.msgpack.Encoder()
        self._seq = 0
        addresses = WorkerAddresses(runtime.data_address, runtime.workers_address)
        log_dir = data_dir / "logs"
        self.workers: dict[str, WorkerProcess] = {
            model.name: WorkerProcess(model, config.supervisor, addresses, self._death, log_dir, self._publish)
            for model in config.models
        }
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

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        self._runtime.config_path.write_bytes(msgspec.json.encode(self._config))
        control_file = control_address_file(self._data_dir)
        control_file.parent.mkdir(parents=True, exist_ok=True)
        control_file.write_text(self._runtime.control_address + "\n")
        tasks = [
            asyncio.create_task(self._serve_control(), name="control"),
            asyncio.create_task(self._serve_reports(), name="reports"),
            asyncio.create_task(self._keep_gateway(), name="gateway"),
        ]
        for worker in self.workers.values():
            worker.start()
        await self._stopping.wait()
        await self._shutdown(tasks)
        if control_file.read_text().strip() == self._runtime.control_address:
            control_file.unlink(missing_ok=True)
        return self._exit_code

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        log.info("stopping")
        tasks[-1].cancel()  # the gateway keeper: no restart from here on
        if self._gateway is not None:
            await terminate(self._gateway, _GATEWAY_STOP_GRACE)
        await asyncio.gather(*(w.stop() for w in self.workers.values()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._context.destroy(linger=0)
        self._death.close()
        shutil.rmtree(self._runtime.directory, ignore_errors=True)
        log.info("stopped")

    def _publish(self, worker: WorkerProcess) -> None:
        self._seq += 1
        status = worker.status(self._seq)
        self._events.send(self._encoder.encode(status))

    def statuses(self) -> list[ModelStatus]:
        return [w.status(self._seq) for w in self.workers.values()]

    async def _serve_control(self) -> None:
        decoder = msgspec.msgpack.Decoder(ControlRequest)
        while True:
            client, payload = await self._control.recv_multipart()
            try:
                request = decoder.decode(payload)
            except msgspec.DecodeError as exc:
                log.warning("control: undecodable request: %s", exc)
                continue
            match request:
                case GetStatus(name=name):
                    models = [s for s in self.statuses() if name is None or s.name == name]
                    reply: ControlReply = StatusReply(models=models)
                case _:
                    reply = CommandResult(ok=False, message=f"unknown command {request!r}")
            try:
                await self._control.send_multipart([client, self._encoder.encode(reply)])
            except zmq.ZMQError:
                pass  # the client left before its reply

    async def _serve_reports(self) -> None:
        decoder = msgspec.msgpack.Decoder(WorkerReport)
        while True:
            identity, payload = await self._reports.recv_multipart()
            name, _, generation = identity.decode().rpartition("#")
            worker = self.workers.get(name)
            if worker is None or not generation.isdigit():
                continue
            try:
                report = decoder.decode(payload)
            except msgspec.DecodeError as exc:
                log.warning("%s: undecodable report: %s", name, exc)
                continue
            worker.on_report(int(generation), report)

    async def _keep_gateway(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "opta_lmx.gateway",
            "--runtime-dir",
            str(self._runtime.directory),
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


def run_supervisor(config: Config, data_dir: Path) -> int:
    runtime = Runtime.create()
    try:
        return asyncio.run(_main(config, data_dir, runtime))
    finally:
        shutil.rmtree(runtime.directory, ignore_errors=True)


async def _main(config: Config, data_dir: Path, runtime: Runtime) -> int:
    return await Supervisor(config, data_dir, runtime).run()


def main() -> int:
    print("use `opta-lmx serve` to start the service", file=sys.stderr)
    return 2
