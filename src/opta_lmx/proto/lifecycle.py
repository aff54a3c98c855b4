"""Worker <-> supervisor: the ready handshake, heartbeats, and commands."""

from __future__ import annotations

import msgspec

# Bumped on any incompatible change to a message; a worker with another version is refused.
PROTO_VERSION = 1


class MemoryReading(msgspec.Struct, frozen=True):
    """Bytes. ``mlx_*`` from the engine's allocator; ``rss``/``uss`` of the worker process."""

    rss: int = 0
    uss: int = 0
    mlx_active: int = 0
    mlx_cache: int = 0
    mlx_peak: int = 0


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
    """Every ~1 s. ``progress`` counts tokens produced since start: a busy worker whose
    progress stands still is hung."""

    generation: int
    progress: int
    active_requests: int
    memory: MemoryReading


class LoadFailed(msgspec.Struct, tag="load_failed", frozen=True):
    generation: int
    message: str


WorkerReport = Ready | Heartbeat | LoadFailed


class Shutdown(msgspec.Struct, tag="shutdown", frozen=True):
    """Accept nothing new; with ``drain``, finish the requests in flight first; then exit."""

    drain: bool = True


class Trim(msgspec.Struct, tag="trim", frozen=True):
    """Release cached memory (gc + allocator cache)."""


WorkerCommand = Shutdown | Trim
