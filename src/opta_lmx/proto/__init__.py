"""The messages that travel between processes (msgspec msgpack), and nothing else.

Sockets and directions:

- data path, gateway ROUTER <-> worker DEALER: ``ToWorker`` one way, ``FromWorker`` back
  (generation: ``Generate``/``Cancel``; embeddings and rerank scores: ``Embed``).
- worker DEALER -> supervisor ROUTER: ``WorkerReport``; supervisor -> worker: ``WorkerCommand``.
- lmxctl / gateway DEALER -> supervisor control ROUTER: ``ControlRequest``; back: ``ControlReply``.
- supervisor PUB -> gateway SUB: ``ModelStatus`` events.

This package imports only msgspec.
"""

from opta_lmx.proto.control import (
    CommandResult,
    ControlReply,
    ControlRequest,
    EnsureLoaded,
    GetStatus,
    KeepAlive,
    ModelStatus,
    Reload,
    Rescan,
    Restart,
    ShutdownServer,
    Signal,
    Start,
    StatusReply,
    Stop,
    Tail,
    TailReply,
)
from opta_lmx.proto.data import (
    Cancel,
    ChatMessage,
    Embed,
    Embeddings,
    Failed,
    Finished,
    FromWorker,
    Generate,
    SamplingParams,
    Started,
    TokenChunk,
    TokenLogprob,
    TokenLogprobs,
    Tool,
    ToolCall,
    ToWorker,
)
from opta_lmx.proto.lifecycle import (
    PROTO_VERSION,
    SPARE_IDENTITY_PREFIX,
    Heartbeat,
    Load,
    LoadFailed,
    MemoryReading,
    Ready,
    Shutdown,
    SpareReady,
    Trim,
    WorkerCommand,
    WorkerReport,
)

__all__ = [
    "PROTO_VERSION",
    "SPARE_IDENTITY_PREFIX",
    "Cancel",
    "ChatMessage",
    "CommandResult",
    "ControlReply",
    "ControlRequest",
    "Embed",
    "Embeddings",
    "EnsureLoaded",
    "Failed",
    "Finished",
    "FromWorker",
    "Generate",
    "GetStatus",
    "Heartbeat",
    "KeepAlive",
    "Load",
    "LoadFailed",
    "MemoryReading",
    "ModelStatus",
    "Ready",
    "Reload",
    "Rescan",
    "Restart",
    "SamplingParams",
    "Shutdown",
    "ShutdownServer",
    "Signal",
    "SpareReady",
    "Start",
    "Started",
    "StatusReply",
    "Stop",
    "Tail",
    "TailReply",
    "TokenChunk",
    "TokenLogprob",
    "TokenLogprobs",
    "Tool",
    "ToolCall",
    "ToWorker",
    "Trim",
    "WorkerCommand",
    "WorkerReport",
]
