"""Everything one gateway process holds, created at start-up and reached as ``app.state.gateway``."""

from __future__ import annotations

import logging
import time

import msgspec
import zmq.asyncio

from opta_lmx.config import Config
from opta_lmx.errors import ServerShuttingDown
from opta_lmx.gateway.link import WorkerLink
from opta_lmx.gateway.metrics.registry import GatewayMetrics
from opta_lmx.gateway.models import ModelTable
from opta_lmx.gateway.status_feed import PullFeed, StatusFeed
from opta_lmx.runtime import Runtime

log = logging.getLogger("opta_lmx.gateway")


class GatewayState:
    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.config = config
        self._runtime = runtime
        self.context = zmq.asyncio.Context()
        self.link = WorkerLink(self.context, runtime.data_address)
        self.models = ModelTable(
            self.context, runtime.events_address, runtime.control_address, self.link, self._reread_config
        )
        self.shutting_down = False
        self.started_at = time.time()
        # Both follow the model table: /admin/events' subscribers, and the load histograms.
        self.feed = StatusFeed()
        self.metrics = GatewayMetrics()
        self.models.listen(self.feed.publish)
        self.models.listen(self.metrics.on_status)
        # The pull jobs' progress streams.
        self.pulls = PullFeed()
        self.models.listen_pulls(self.pulls.publish)

    def _reread_config(self, version: int) -> None:
        """The supervisor reloaded its config: take the new models, aliases and presets."""
        self.config = msgspec.json.decode(self._runtime.config_path.read_bytes(), type=Config)
        log.info("config version %d: %d models", version, len(self.config.models))

    async def start(self) -> None:
        self.link.start()
        await self.models.start()

    def begin_shutdown(self) -> None:
        """End every open request now with a terminal ``server_shutdown`` error."""
        self.shutting_down = True
        self.feed.close()
        self.pulls.close()
        self.link.fail_all(ServerShuttingDown("The server is shutting down; retry shortly."))

    def close(self) -> None:
        self.models.close()
        self.link.close()
        self.context.destroy(linger=0)
