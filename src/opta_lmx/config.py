"""The configuration file (TOML), decoded once into frozen Structs; unknown keys are refused.

See ``etc/opta-lmx.toml`` for every key with its meaning. Constructors take these Structs;
nothing below the command line reads the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import msgspec

from opta_lmx.engine_choice import GGUF, GGUF_EMBEDDING, LLAMA_MAX_SEQUENCES, engine_option_errors, gguf_encoder, resolve_engine
from opta_lmx.errors import ConfigError

DEMO_MODEL_NAME = "opta-demo"
ENGINES = ("auto", "mlx", "gguf", "embedding", "gguf-embedding")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 1234
    # Seconds without a token before a request fails with 504 (prefill included).
    inter_token_timeout: float = 300.0
    # Seconds a request waits for its model's worker to become ready before 503.
    ready_wait: float = 30.0
    # A request body larger than this is refused with 413 before it is read.
    max_body_bytes: int = 32 * 1024 * 1024
    # Requests per model waiting for a batch slot (beyond the model's batch_size) before new ones
    # get 429 with Retry-After; a model's own [models.options] max_queued overrides it.
    max_queued: int = 256
    # Keys a client must present (``Authorization: Bearer KEY`` or ``x-api-key: KEY``) on the
    # API routes; none: the API is open.
    api_keys: list[str] = []
    # The key of the /admin routes; "" lets only clients on the loopback address use them.
    admin_key: str = ""
    # Listening beyond the loopback address without api_keys is refused unless this is true.
    allow_unauthenticated_remote: bool = False
    # Host names the server answers to besides localhost and IP addresses (a web page that
    # rebinds its own name to 127.0.0.1 must not reach the API: DNS rebinding).
    allowed_hosts: list[str] = []
    # Web origins whose pages may call the API from a browser (CORS); a browser request from
    # any other origin is refused. "*" allows every origin.
    cors_origins: list[str] = []
    # Serve every model found on disk (see StoreConfig) by name too, loaded on its first request.
    serve_local_models: bool = True


class SupervisorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    load_timeout: float = 300.0
    heartbeat_interval: float = 1.0
    # Heartbeats missed in a row before a worker counts as dead and is killed.
    heartbeat_misses: int = 5
    # A worker with requests whose progress counter stands still this long is hung: killed, restarted.
    hang_timeout: float = 60.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_failures: int = 5
    failure_window: float = 300.0
    # Seconds in-flight requests get to finish when a worker is stopped, evicted or swapped.
    drain_grace: float = 30.0
    stop_grace: float = 10.0
    # Keep one worker process started with its imports done and no model, so a load pays only
    # for the weights.
    warm_spare: bool = True
    # Linux: a BLAS library workers preload (LD_PRELOAD) in place of the reference BLAS the
    # mlx[cpu] wheel links. "auto": the system's OpenBLAS when there is one; "off": none; or a
    # path. Read at start.
    preload_blas: str = "auto"


class MemoryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Bytes, or a fraction (<= 1) of the machine's RAM.
    budget: float = 0.75
    # Fractions of the budget: above soft, workers are asked to trim; above hard for
    # hard_readings readings in a row, the least recently used idle worker is evicted.
    soft_limit: float = 0.85
    hard_limit: float = 0.95
    hard_readings: int = 3
    # Admission estimate: weights on disk x weights_factor + kv_headroom + process_overhead (for a
    # GGUF model, its KV caches' size, known from its header and options, replaces kv_headroom).
    weights_factor: float = 1.2
    kv_headroom: int = 512 * 1024 * 1024
    process_overhead: int = 256 * 1024 * 1024
    # At most this many models loaded at once (0 = no limit).
    max_loaded_models: int = 0
    # Seconds a load waits for a busy model to finish so it can be evicted, before the load is
    # refused (507); a request asking for a model beyond the limit waits its turn meanwhile.
    wait_for_room: float = 30.0


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where models on disk are found, besides ``<data_dir>/models`` (pulled and imported ones)."""

    # The Hugging Face cache ($HF_HUB_CACHE, by default ~/.cache/huggingface/hub).
    hf_cache: bool = True
    # Folders laid out as publisher/model/files, LM Studio's way (its folders by default).
    dirs: list[str] = msgspec.field(default_factory=lambda: ["~/.lmstudio/models", "~/.cache/lm-studio/models"])


class Preset(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Request defaults for the models that name this preset; a request's own values win."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None


class EngineOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Options of a model's worker: each engine's, and how it streams. An option set on a model
    whose engine has no use for it is refused (``engine_option_errors``)."""

    # Requests decoded together; more wait their turn. An embedding model's forward pass takes at
    # most batch_size inputs.
    batch_size: int = 32
    # Prompts prefilled together, and prompt tokens per prefill step (bounds how long one step's
    # prefill delays the tokens of the requests already decoding). An MLX embedding model's
    # forward pass takes at most prefill_step_size padded tokens.
    prefill_batch_size: int = 8
    prefill_step_size: int = 2048
    # A rotating KV cache of at most this many tokens per request (0 = the whole context).
    max_kv_size: int = 0
    # Finished requests' KV caches kept for reuse by prompts that start with the same tokens (the
    # next turn of a conversation), least recently used dropped first; 0 entries disables it.
    # 10 entries is mlx-lm server's default. 512 MiB matches memory.kv_headroom, the KV room
    # admission reserves per model: an 8B model (128 KiB per token) keeps about 4k tokens of
    # conversation, a small one far more; a memory squeeze empties it anyway (trim).
    prompt_cache_entries: int = 10
    prompt_cache_bytes: int = 512 * 1024 * 1024
    # The prompt cache's disk tier: caches leaving memory (least recently used, a memory squeeze,
    # the worker's exit for a restart, swap or unload) are written to <kv_disk_dir>/<model name>,
    # at most kv_disk_bytes of them (least recently used removed first), and a later worker for
    # the same weights starts from them. 0 disables it. "" is <data_dir>/kv.
    kv_disk_bytes: int = 8 * 1024**3
    kv_disk_dir: str = ""
    # KV-cache quantization (bits per value, 0 = off), from the quantized_kv_start-th token of a
    # request on; and a draft model (path) for speculative decoding, proposing num_draft_tokens
    # tokens a step. mlx-lm's batch generator has neither, so either one makes the engine decode
    # one request at a time (as mlx_lm.server does), without the prompt cache.
    kv_bits: Literal[0, 2, 3, 4, 5, 6, 8] = 0
    kv_group_size: Literal[32, 64, 128] = 64
    quantized_kv_start: int = 5000
    draft_model: str = ""
    num_draft_tokens: int = 3
    # Where MLX on a CPU (no GPU: Linux's mlx[cpu]) computes attention: "numpy" (SIMD softmax,
    # several times quicker over a long context; worker/engines/mlx_cpu_attention.py) or "mlx"
    # (its own). MLX on a GPU always uses its own kernel, and so does a quantized KV cache.
    cpu_attention: Literal["numpy", "mlx"] = "numpy"
    # How long generated text may wait in the worker to leave with the next step's (one message
    # for several tokens): only while steps are quicker than this, so a model whose steps take
    # longer streams every token at once. 0 sends every step's tokens at once.
    stream_interval_ms: float = 4.0
    # Requests waiting for a batch slot before new ones get 429 (-1: the server's max_queued).
    max_queued: int = -1
    # GGUF (llama.cpp): requests decoded together, each in a slot with its own KV cache of
    # slot_context tokens (0: the model's training context), allocated at load.
    slots: int = 4
    slot_context: int = 4096
    # Threads of llama.cpp's compute (0: every core but one, which the gateway needs).
    threads: int = 0
    # Tokens per decode call (a step's new tokens and prompt chunks) and per compute pass. A GGUF
    # embedding model computes each forward pass, and so each input, in one pass of n_ubatch tokens.
    n_batch: int = 2048
    n_ubatch: int = 512
    # llama.cpp's flash attention: "auto", "on" or "off" (it changes greedy text a little).
    flash_attn: Literal["auto", "on", "off"] = "auto"
    # A Jinja chat template that replaces the model's own (a GGUF may have none).
    chat_template: str = ""
    # GGUF embedding models: how a text's token states become its vector ("": as the file says,
    # else "mean" for an encoder and "last" for a decoder), and whether vectors are scaled to unit
    # length (what sentence-transformers models are trained for).
    pooling: Literal["", "mean", "cls", "last"] = ""
    normalize: bool = True

    @property
    def sequential(self) -> bool:
        return bool(self.kv_bits or self.draft_model)


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    path: str
    # "auto" (a GGUF file -> "gguf", or "gguf-embedding" for an encoder or a file with a pooling
    # type; a sentence-transformers model or BERT encoder -> "embedding"; else "mlx"), "mlx",
    # "gguf", "embedding", "gguf-embedding" (any GGUF's pooled embeddings, a decoder's too), or
    # "package.module:Class" (a plug-in).
    engine: str = "auto"
    # Other names clients may use for this model.
    aliases: list[str] = []
    # The name of a [presets.NAME] table whose values are this model's request defaults.
    preset: str | None = None
    # Seconds idle before the model is unloaded: -1 never, 0 as soon as it is idle.
    keep_alive: float = -1
    # Never evicted to make room for another model.
    pinned: bool = False
    # Load when the server starts; otherwise on the first request for it.
    load_on_start: bool = True
    options: EngineOptions = EngineOptions()


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server: ServerConfig = ServerConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    memory: MemoryConfig = MemoryConfig()
    store: StoreConfig = StoreConfig()
    presets: dict[str, Preset] = {}
    models: list[ModelConfig] = []
    # Where built demo models, logs and state live; "" means the default data directory.
    data_dir: str = ""

    def model(self, name: str) -> ModelConfig | None:
        """The model called ``name``, or having it as an alias."""
        return next((m for m in self.models if m.name == name or name in m.aliases), None)

    def request_limit(self, model: ModelConfig) -> int:
        """Requests the model may have in flight: its batch, and the queue behind it."""
        queued = model.options.max_queued if model.options.max_queued >= 0 else self.server.max_queued
        return model.options.batch_size + queued


def default_data_dir() -> Path:
    """``$OPTA_LMX_HOME`` or ``~/.local/share/opta-lmx``; read once, by the command line."""
    home = os.environ.get("OPTA_LMX_HOME")
    return Path(home) if home else Path.home() / ".local" / "share" / "opta-lmx"


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        config = msgspec.toml.decode(text.encode(), type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    _check(config, source)
    return config


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(text, str(path))


def _check(config: Config, source: str) -> None:
    if not 0 < config.server.port < 65536:
        raise ConfigError(f"{source}: server.port must be 1-65535, got {config.server.port}")
    if config.server.max_body_bytes < 1024 or config.server.max_queued < 0:
        raise ConfigError(f"{source}: server.max_body_bytes must be at least 1024 and server.max_queued >= 0")
    blas = config.supervisor.preload_blas
    if blas not in ("auto", "off", "") and not os.path.isfile(blas):
        raise ConfigError(f'{source}: supervisor.preload_blas: no such file {blas!r} (or "auto", "off")')
    memory = config.memory
    if memory.budget <= 0 or not 0 < memory.soft_limit <= memory.hard_limit <= 1:
        raise ConfigError(f"{source}: memory needs budget > 0 and 0 < soft_limit <= hard_limit <= 1")
    seen: set[str] = set()
    for model in config.models:
        if model.engine not in ENGINES and ":" not in model.engine:
            raise ConfigError(
                f"{source}: model {model.name!r}: engine {model.engine!r} is not available "
                f"(use one of {', '.join(ENGINES)}, or \"package.module:Class\")"
            )
        options = model.options
        if min(
            options.batch_size, options.prefill_batch_size, options.prefill_step_size, options.num_draft_tokens
        ) < 1 or min(
            options.max_kv_size,
            options.prompt_cache_entries,
            options.prompt_cache_bytes,
            options.kv_disk_bytes,
            options.quantized_kv_start,
            options.stream_interval_ms,
        ) < 0:
            raise ConfigError(
                f"{source}: model {model.name!r}: options must be positive "
                "(max_kv_size, prompt_cache_*, kv_disk_bytes, quantized_kv_start and stream_interval_ms >= 0)"
            )
        if not 1 <= options.slots <= 256 or min(options.slot_context, options.threads) < 0 or min(options.n_batch, options.n_ubatch) < 1:
            raise ConfigError(
                f"{source}: model {model.name!r}: slots must be 1-256, n_batch and n_ubatch positive, "
                "slot_context and threads >= 0"
            )
        if options.n_batch < options.slots:
            raise ConfigError(
                f"{source}: model {model.name!r}: n_batch ({options.n_batch}) must be at least slots "
                f"({options.slots}): every step decodes a token for each slot"
            )
        engine = resolve_engine(model.engine, model.path)
        misplaced = engine_option_errors(options, engine)
        if misplaced:
            raise ConfigError(f"{source}: model {model.name!r} ({model.path}): {'; '.join(misplaced)}")
        if engine == GGUF and (encoder := gguf_encoder(model.path)) is not None:
            raise ConfigError(
                f"{source}: model {model.name!r} ({model.path}) is an encoder ({encoder}): it makes "
                f'embeddings and cannot generate text; use engine = "auto" or "gguf-embedding"'
            )
        if engine == GGUF_EMBEDDING and options.batch_size > LLAMA_MAX_SEQUENCES:
            raise ConfigError(
                f"{source}: model {model.name!r}: batch_size must be at most {LLAMA_MAX_SEQUENCES} "
                "for a GGUF embedding model (llama.cpp's limit of sequences in one context)"
            )
        if options.kv_bits and options.max_kv_size:
            raise ConfigError(
                f"{source}: model {model.name!r}: kv_bits and max_kv_size together are not supported "
                "(mlx-lm cannot quantize a rotating KV cache)"
            )
        if model.preset is not None and model.preset not in config.presets:
            raise ConfigError(f"{source}: model {model.name!r}: no [presets.{model.preset}] table")
        for name in (model.name, *model.aliases):
            if not MODEL_NAME_PATTERN.match(name):
                raise ConfigError(
                    f"{source}: model name {name!r} must be 1-128 characters of letters, digits, "
                    "'.', '_', ':', '/', '-' and start with a letter or digit"
                )
            if name in seen:
                raise ConfigError(f"{source}: model name {name!r} is listed twice")
            seen.add(name)


def with_demo_model(config: Config, demo_path: Path) -> Config:
    """The config with the built-in demo model added, used when no model is configured."""
    demo = ModelConfig(name=DEMO_MODEL_NAME, path=str(demo_path))
    return msgspec.structs.replace(config, models=[demo])


_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def exposure_error(server: ServerConfig) -> str | None:
    """Why the server must not start listening as configured, or None: beyond the loopback
    address, anyone who can reach the port could use the models unless keys are required."""
    if server.host in _LOOPBACK_HOSTS or server.host.startswith("127.") or server.api_keys:
        return None
    if server.allow_unauthenticated_remote:
        return None
    return (
        f"listening on {server.host} would let anyone who reaches port {server.port} use the models: "
        "set [server] api_keys, or allow_unauthenticated_remote = true to do it deliberately"
    )


def with_local_models(config: Config, local: list[ModelConfig]) -> Config:
    """The config with models found on disk added, unless a configured model already has the name
    (as a name or an alias) or the path: the configured one wins."""
    taken = {name for m in config.models for name in (m.name, *m.aliases)}
    paths = {_resolved(m.path) for m in config.models}
    extra = [m for m in local if m.name not in taken and _resolved(m.path) not in paths]
    return msgspec.structs.replace(config, models=[*config.models, *extra]) if extra else config


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def budget_bytes(memory: MemoryConfig, total_ram: int) -> int:
    """The memory budget in bytes: a fraction (<= 1) of the machine's RAM, or bytes."""
    return int(memory.budget * total_ram) if memory.budget <= 1 else int(memory.budget)
