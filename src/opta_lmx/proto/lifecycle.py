"""Worker <-> supervisor: the ready handshake, heartbeats, and commands."""

from __future__ import annotations

import msgspec

# Bumped on any incompatible change to a message; a worker with another version is refused.
PROTO_VERSION = 1

# A warm spare's identity on the supervisor's worker socket; "~" starts no model name.
SPARE_IDENTITY_PREFIX = "~spare#"


class MemoryReading(msgspec.Struct, frozen=True):
    """Bytes. ``mlx_*`` from the engine's allocator; ``rss``/``uss``/``pss`` of the worker process."""

    rss: int = 0
    uss: int = 0
    mlx_active: int = 0
    mlx_cache: int = 0
    mlx_peak: int = 0
    pss: int = 0


class Ready(msgspec.Struct, tag="ready", frozen=True):
    """Sent once the model is loaded and the worker can serve: only then is it RUNNING."""

    proto_version: int
    model: str
    generation: int
    pid: int
    ctx_len: int
    memory: MemoryReading
    import_seconds: float = 0.0
    load_seconds: float = 0.0


class Heartbeat(msgspec.Struct, tag="heartbeat", frozen=True):
    """Every ~1 s. ``progress`` counts tokens produced and prompt chunks prefilled since start:
    a busy worker whose progress stands still, and who is not computing (``cpu_seconds``, the
    process's CPU time, stands still too), is hung. ``first_token_seconds``: the first request's
    time to first token, from its arrival at the worker (0 until then)."""

    generation: int
    progress: int
    active_requests: int
    memory: MemoryReading
    first_token_seconds: float = 0.0
    cpu_seconds: float = 0.0


class SpareReady(msgspec.Struct, tag="spare_ready", frozen=True):
    """A warm spare: imports done, no model; it waits for ``Load``."""

    pid: int
    import_seconds: float


class LoadFailed(msgspec.Struct, tag="load_failed", frozen=True):
    generation: int
    message: str


WorkerReport = Ready | Heartbeat | LoadFailed | SpareReady


class Shutdown(msgspec.Struct, tag="shutdown", frozen=True):
    """Accept nothing new; with ``drain``, finish the requests in flight first; then exit."""

    drain: bool = True


class Trim(msgspec.Struct, tag="trim", frozen=True):
    """Release cached memory (gc + allocator cache)."""


class Load(msgspec.Struct, tag="load", frozen=True):
    """To a warm spare: become the worker for this model (the arguments a fresh worker gets)."""

    model: str
    path: str
    engine: str
    generation: int
    heartbeat_interval: float
    log_path: str
    # The model's [models.options] as JSON (the worker decodes them with the config's types).
    options: bytes = b"{}"


WorkerCommand = Shutdown | Trim | Load
