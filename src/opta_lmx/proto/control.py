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
    # Unplanned exits the supervisor answered with a restart, by cause (``RESTART_CAUSES``), and
    # planned stops by cause (``STOP_CAUSES``): counts since the supervisor started.
    restarts: dict[str, int] = {}
    stops: dict[str, int] = {}
    # The last time the model's worker ended: its cause (one of the above, or "shutdown"), in
    # words (exit status, signal, log tail), and when (wall-clock seconds).
    last_exit_cause: str = ""
    last_exit: str = ""
    last_exit_at: float = 0.0
    # Requests the worker holds beyond its batch_size, waiting for a slot (last heartbeat).
    queued: int = 0
    # The models this start evicted to make room, and the seconds that took (their drains)
    # before the spawn began: a swap. Empty for a start that evicted nothing.
    evicted: list[str] = []
    evict_seconds: float = 0.0


# Why a worker ended without being asked to (restarted unless it fails too often):
# crash        it exited or was killed by someone else (exit status, signal, OOM killer)
# load_failed  it never became ready (load error, exit while loading, load_timeout)
# hung         busy without progress for hang_timeout; killed by the supervisor
# unresponsive no heartbeat for heartbeat_misses intervals; killed by the supervisor
# memory       over the hard memory limit with nothing idle to evict; killed by the supervisor
# signal       an operator signalled it (``lmxctl kill``)
RESTART_CAUSES = ("crash", "load_failed", "hung", "unresponsive", "memory", "signal")
# Why a worker was stopped on purpose (never restarted): an operator's stop or restart, an
# eviction (room for another model, or the hard memory limit), keep_alive, a config reload.
STOP_CAUSES = ("operator", "evicted", "idle", "reload")


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


class GetModels(msgspec.Struct, tag="models", frozen=True):
    """Every configured model (or ``name``) with its settings and live status."""

    name: str | None = None


class GetMemory(msgspec.Struct, tag="memory", frozen=True):
    """The budget, what each worker uses, and, with ``model``, what loading it would take."""

    model: str | None = None


class PullModel(msgspec.Struct, tag="pull_model", frozen=True):
    """Download ``repo`` (``ORG/NAME``, or ``ORG/NAME@REVISION``) from the Hugging Face hub into
    the data directory, as a job the supervisor runs; answered with the job (``PullsReply``)
    at once. ``quant`` chooses a GGUF repository's quantization. A pull of a repository already
    being pulled with the same settings answers with that job."""

    repo: str
    revision: str = ""
    quant: str | None = None


class GetPulls(msgspec.Struct, tag="pulls", frozen=True):
    """The pull jobs the supervisor knows (running ones and the last finished ones), or one."""

    id: str | None = None


class CancelPull(msgspec.Struct, tag="cancel_pull", frozen=True):
    """Stop a running pull at its next network chunk; its partial download is kept for the
    next pull of the same repository to continue."""

    id: str


class RemoveModel(msgspec.Struct, tag="remove_model", frozen=True):
    """Delete a local model's files; refused while a worker has it loaded or is loading it,
    and for a configured model. The models on disk are scanned again after."""

    name: str


ControlRequest = (
    GetStatus
    | EnsureLoaded
    | KeepAlive
    | Start
    | Stop
    | Restart
    | Signal
    | Tail
    | Reload
    | ShutdownServer
    | GetModels
    | GetMemory
    | Rescan
    | PullModel
    | GetPulls
    | CancelPull
    | RemoveModel
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


class ModelInfo(msgspec.Struct, frozen=True):
    """A configured model: its settings, the admission estimate of its memory need (bytes), the
    requests it may hold (``batch_size`` decoding plus the queue behind them), and its status."""

    name: str
    path: str
    engine: str
    aliases: list[str]
    pinned: bool
    load_on_start: bool
    batch_size: int
    request_limit: int
    estimate: int
    status: ModelStatus


class ModelsReply(msgspec.Struct, tag="models_reply", frozen=True):
    models: list[ModelInfo]


class WorkerMemory(msgspec.Struct, frozen=True):
    """One live worker's memory in bytes. ``counted`` is what admission counts for it: the larger
    of its measured use (``used``: its own USS report or the OS view of its process tree,
    whichever is larger) and its estimate. ``uss``, ``rss`` and ``mlx_*`` are from its last
    heartbeat."""

    name: str
    state: str
    pid: int
    counted: int
    used: int
    estimate: int
    uss: int = 0
    rss: int = 0
    mlx_active: int = 0
    mlx_cache: int = 0
    mlx_peak: int = 0
    busy: bool = False
    pinned: bool = False


class AdmissionEstimate(msgspec.Struct, frozen=True):
    """What loading ``model`` now would take: ``need`` bytes (weights on disk x weights_factor +
    kv_headroom + process_overhead) against ``free`` bytes of the budget (without it, if it is
    loaded); ``fits`` after evicting ``evict`` (idle models, least recently used first), or
    ``reason`` why not."""

    model: str
    loaded: bool
    need: int
    free: int
    fits: bool
    evict: list[str] = []
    reason: str = ""


class MemoryReply(msgspec.Struct, tag="memory_reply", frozen=True):
    """Bytes. ``used`` is the sum of the workers' ``counted``; the soft and hard limits are the
    policing thresholds (trim, then evict or kill)."""

    budget: int
    used: int
    soft_limit: int
    hard_limit: int
    max_loaded_models: int
    workers: list[WorkerMemory]
    estimate: AdmissionEstimate | None = None


# A pull job's states: ``pending`` (not started yet), ``listing`` (asking the hub what the
# repository holds), ``downloading``, ``installing`` (every file is in and checked; the server is
# taking the model in), then one of ``done``, ``failed``, ``cancelled``.
PULL_STATES = ("pending", "listing", "downloading", "installing", "done", "failed", "cancelled")
PULL_FINISHED = ("done", "failed", "cancelled")


class PullJob(msgspec.Struct, tag="pull_job", frozen=True):
    """One pull as the supervisor runs it: a reply to ``PullModel``/``GetPulls``, and published
    on the events socket at each change (progress at most a few times a second).

    ``seq`` is the supervisor's event sequence number as of this state: once ``done``, the
    statuses published before it include the new model. ``error`` names a failure for
    programs: ``not_found`` (repository, revision, file or quantization), ``download_failed``
    (network, a corrupt file, the hub refused), ``disk_full``, ``cancelled``, ``internal``.
    ``model`` is the name the model is served under, once done.
    """

    id: str
    repo: str
    revision: str
    state: str
    seq: int = 0
    quant: str | None = None
    files: list[str] = []
    current_file: str = ""
    file_done: int = 0
    file_bytes: int = 0
    done_bytes: int = 0
    total_bytes: int = 0
    message: str = ""
    error: str = ""
    model: str = ""
    path: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0


class PullsReply(msgspec.Struct, tag="pulls_reply", frozen=True):
    jobs: list[PullJob]


ControlReply = StatusReply | CommandResult | TailReply | ModelsReply | MemoryReply | PullsReply
# What the supervisor publishes on its events socket.
Event = ModelStatus | PullJob
