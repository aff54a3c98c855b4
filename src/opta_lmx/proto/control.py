"""Supervisor control socket (lmxctl, gateway) and the status events it publishes."""

from __future__ import annotations

import msgspec


class ModelStatus(msgspec.Struct, tag="model_status", frozen=True):
    """One configured model as the supervisor sees it. ``state`` uses supervisord's names.

    ``identity`` is the worker's data-path identity (``model#generation``) while it serves (RUNNING,
    or STOPPING while its requests drain), else "". New requests go only to RUNNING workers.
    ``seq`` grows with every change the supervisor publishes, so a subscriber can drop stale ones.
    """

    name: str
    state: str
    seq: int
    generation: int = 0
    pid: int = 0
    identity: str = ""
    ctx_len: int = 0
    started_at: float = 0.0
    description: str = ""
    memory: int = 0
    active_requests: int = 0
    # Set when a reload removed the model: subscribers forget it.
    removed: bool = False
    # Where the last start's time went: process spawn (0 from a warm spare), imports, weights;
    # and the first request's time to first token, from its arrival at the worker.
    spawn_seconds: float = 0.0
    import_seconds: float = 0.0
    load_seconds: float = 0.0
    first_token_seconds: float = 0.0
    # From the last heartbeat: MLX's arrays in use (weights, KV caches, prompt cache) and the
    # freed buffers its allocator keeps for reuse; ``memory`` is the process's USS.
    mlx_active: int = 0
    mlx_cache: int = 0
    # Grows with every config reload; a subscriber that sees a newer one re-reads the config.
    config_version: int = 0
    # Seconds idle before the model is unloaded (the config's, or the last ``KeepAlive``'s while
    # loaded); negative: never (always so for a pinned model). ``last_used``: wall-clock seconds
    # of its last activity, so ``last_used + keep_alive`` is when an idle model goes.
    keep_alive: float = -1.0
    last_used: float = 0.0


class GetStatus(msgspec.Struct, tag="status", frozen=True):
    name: str | None = None


class EnsureLoaded(msgspec.Struct, tag="ensure_loaded", frozen=True):
    """From the gateway: a request wants this model; load it (once) unless it is loaded."""

    name: str


class KeepAlive(msgspec.Struct, tag="keep_alive", frozen=True):
    """From the gateway: a request sets how long ``name`` stays loaded once idle, counted from
    now (negative: never; 0: as soon as it is idle). It holds until the model is unloaded; the
    config's ``keep_alive`` applies again to the next load. No effect on a pinned model."""

    name: str
    seconds: float


class Start(msgspec.Struct, tag="start", frozen=True):
    name: str


class Stop(msgspec.Struct, tag="stop", frozen=True):
    name: str


class Restart(msgspec.Struct, tag="restart", frozen=True):
    name: str


class Signal(msgspec.Struct, tag="signal", frozen=True):
    name: str
    signal: str = "KILL"


class Tail(msgspec.Struct, tag="tail", frozen=True):
    """The worker log from byte ``offset`` (negative: the last ``-offset`` bytes)."""

    name: str
    offset: int = -1600


class Reload(msgspec.Struct, tag="reload", frozen=True):
    pass


class ShutdownServer(msgspec.Struct, tag="shutdown_server", frozen=True):
    pass


class Rescan(msgspec.Struct, tag="rescan", frozen=True):
    """Look for models on disk again (after a pull or a delete): new ones are served, gone ones dropped."""


ControlRequest = (
    GetStatus | EnsureLoaded | KeepAlive | Start | Stop | Restart | Signal | Tail | Reload | ShutdownServer | Rescan
)


class StatusReply(msgspec.Struct, tag="status_reply", frozen=True):
    models: list[ModelStatus]


class CommandResult(msgspec.Struct, tag="result", frozen=True):
    """``code`` names the failure for programs (e.g. ``insufficient_memory``, ``model_not_found``).

    ``seq`` is the supervisor's event sequence number once the command took effect: a subscriber
    that has seen events up to ``seq`` sees the command's consequences.
    """

    ok: bool
    message: str = ""
    code: str = ""
    seq: int = 0


class TailReply(msgspec.Struct, tag="tail_reply", frozen=True):
    text: str
    offset: int


ControlReply = StatusReply | CommandResult | TailReply
