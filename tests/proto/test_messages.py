import inspect

import msgspec
import pytest

from opta_lmx import proto
from opta_lmx.proto import (
    PROTO_VERSION,
    AdmissionEstimate,
    Cancel,
    CancelPull,
    ChatMessage,
    CommandResult,
    ControlReply,
    ControlRequest,
    Embed,
    Embeddings,
    EnsureLoaded,
    Event,
    KeepAlive,
    Failed,
    Finished,
    FromWorker,
    Generate,
    GetMemory,
    GetModels,
    GetPulls,
    GetStatus,
    Heartbeat,
    Load,
    LoadFailed,
    MemoryReading,
    MemoryReply,
    ModelInfo,
    ModelsReply,
    ModelStatus,
    PullJob,
    PullModel,
    PullsReply,
    Ready,
    Reload,
    RemoveModel,
    Rescan,
    Restart,
    SamplingParams,
    Shutdown,
    ShutdownServer,
    Signal,
    SpareReady,
    Start,
    Started,
    StatusReply,
    Stop,
    Tail,
    TailReply,
    TokenChunk,
    Tool,
    ToolCall,
    TokenLogprob,
    TokenLogprobs,
    ToWorker,
    Trim,
    WorkerCommand,
    WorkerMemory,
    WorkerReport,
)

MEMORY = MemoryReading(rss=10, uss=9, mlx_active=8, mlx_cache=7, mlx_peak=6)
STATUS = ModelStatus(
    name="m", state="RUNNING", seq=3, generation=2, pid=42, identity="m#2", ctx_len=2048, keep_alive=300.0, last_used=1.5e9
)
RESTARTED = ModelStatus(
    name="m", state="BACKOFF", seq=9, restarts={"crash": 2, "hung": 1}, stops={"evicted": 1},
    last_exit_cause="crash", last_exit="exited unexpectedly (killed by SIGKILL)", last_exit_at=1.5e9,
    queued=3, evicted=["a", "b"], evict_seconds=0.5,
)
INFO = ModelInfo("m", "/models/m", "auto", ["alias"], False, True, 32, 288, 1 << 30, STATUS)
MEMORY_REPLY = MemoryReply(
    16 << 30, 2 << 30, 13 << 30, 15 << 30, 0,
    [WorkerMemory("m", "RUNNING", 42, 2 << 30, 1 << 30, 2 << 30, 1 << 30, 3 << 29, 7, 8, 9, True, False)],
    AdmissionEstimate("n", False, 1 << 30, 14 << 30, True, ["m"]),
)
PULLING = PullJob(
    "0123456789ab", "org/m", "main", "downloading", seq=5, quant="Q4_K_M", files=["m-Q4_K_M.gguf"],
    current_file="m-Q4_K_M.gguf", file_done=10, file_bytes=20, done_bytes=10, total_bytes=20, started_at=1.5e9,
)
FAILED = PullJob("0123456789ac", "org/n", "v1", "failed", message="repository org/n not found", error="not_found")

CASES = [
    (ToWorker, Generate(7, [ChatMessage("user", "hi")], SamplingParams(5, 0.5, 0.9, ["x", "yz"]))),
    (ToWorker, Generate(8, [ChatMessage("system", ""), ChatMessage("user", "é✓")])),
    (
        ToWorker,
        Generate(
            9,
            [ChatMessage("assistant", "", [ToolCall("call_1", "f", '{"a": 1}')]), ChatMessage("tool", "3", tool_call_id="call_1")],
            json_schema='{"type": "object"}',
            tools=[Tool("f", "adds", {"type": "object", "properties": {"a": {"type": "integer"}}})],
            tool_choice="required",
            parallel_tool_calls=False,
        ),
    ),
    (ToWorker, Generate(10, [ChatMessage("user", "patch")], grammar='start: "*** Begin Patch" /[a-z]+/')),
    (ToWorker, Cancel(7)),
    (ToWorker, Embed(10, ["a cat", "é✓"], truncate=True, dimensions=64)),
    (ToWorker, Embed(11, token_ids=[[101, 7592, 102], [101, 102]])),
    (ToWorker, Embed(12, ["doc one", "doc two"], query="which doc?")),
    (FromWorker, Embeddings(10, b"\x00\x00\x80?" * 4, 2, 9)),
    (FromWorker, Embeddings(12, b"\x00\x00\x00?" * 2, 1, 14, "cosine")),
    (FromWorker, Started(7, 12)),
    (FromWorker, TokenChunk(7, "hello", 3)),
    (FromWorker, TokenChunk(7, "", 1, None, "", [ToolCall("call_2", "f", "{}")])),
    (FromWorker, Finished(7, "length", 12, 5)),
    (FromWorker, Finished(7, "stop", 12, 5, 8)),
    (FromWorker, Failed(7, "context_length_exceeded", "too long")),
    (WorkerReport, Ready(PROTO_VERSION, "m", 2, 42, 2048, MEMORY, 0.5, 0.25)),
    (WorkerReport, Heartbeat(2, 100, 1, MEMORY)),
    (WorkerReport, LoadFailed(2, "no such file")),
    (WorkerReport, SpareReady(77, 0.8)),
    (WorkerCommand, Load("m", "/p", "mlx", 3, 0.5, "/logs/m.log", b'{"batch_size":4}')),
    (FromWorker, TokenChunk(7, "hi", 1, [TokenLogprobs("hi", -0.5, [104, 105], [TokenLogprob("hi", -0.5, [104, 105])])])),
    (WorkerCommand, Shutdown()),
    (WorkerCommand, Shutdown(drain=False)),
    (WorkerCommand, Trim()),
    (ControlRequest, GetStatus("m")),
    (ControlRequest, GetStatus()),
    (ControlRequest, EnsureLoaded("m")),
    (ControlRequest, KeepAlive("m", 300.0)),
    (ControlRequest, Start("m")),
    (ControlRequest, Stop("m")),
    (ControlRequest, Restart("m")),
    (ControlRequest, Signal("m", "TERM")),
    (ControlRequest, Tail("m", 100)),
    (ControlRequest, Reload()),
    (ControlRequest, ShutdownServer()),
    (ControlRequest, Rescan()),
    (ControlRequest, GetModels()),
    (ControlRequest, GetModels("m")),
    (ControlRequest, GetMemory()),
    (ControlRequest, GetMemory("m")),
    (ControlReply, ModelsReply([INFO])),
    (ControlReply, MemoryReply(1, 0, 1, 1, 2, [])),
    (ControlReply, MEMORY_REPLY),
    (ModelStatus, RESTARTED),
    (ControlReply, StatusReply([STATUS])),
    (ControlReply, CommandResult(False, "nope", "insufficient_memory")),
    (ControlReply, TailReply("log text", 1234)),
    (ModelStatus, STATUS),
    (ControlRequest, PullModel("org/m")),
    (ControlRequest, PullModel("org/m", "v1", "Q8_0")),
    (ControlRequest, GetPulls()),
    (ControlRequest, GetPulls("0123456789ab")),
    (ControlRequest, CancelPull("0123456789ab")),
    (ControlRequest, RemoveModel("org/m")),
    (ControlReply, PullsReply([PULLING, FAILED])),
    (Event, PULLING),
    (Event, STATUS),
]


@pytest.mark.parametrize(("union", "message"), CASES, ids=lambda v: type(v).__name__)
def test_round_trip(union: object, message: msgspec.Struct) -> None:
    decoded = msgspec.msgpack.Decoder(union).decode(msgspec.msgpack.Encoder().encode(message))
    assert decoded == message
    assert type(decoded) is type(message)


def test_every_message_has_a_round_trip_case() -> None:
    tagged = {
        cls
        for _, cls in inspect.getmembers(proto, inspect.isclass)
        if issubclass(cls, msgspec.Struct) and cls.__struct_config__.tag is not None
    }
    assert tagged == {type(message) for _, message in CASES}


def test_token_chunk_is_compact() -> None:
    # The hot message is array-like: no field names on the wire.
    encoded = msgspec.msgpack.encode(TokenChunk(1, "a", 1))
    assert b"request_id" not in encoded and len(encoded) < 12


def test_finished_from_an_older_worker_decodes_with_no_cached_tokens() -> None:
    # Appended fields keep the wire compatible: a message without them takes the default.
    old = msgspec.msgpack.encode(["f", 7, "length", 12, 5])
    assert msgspec.msgpack.Decoder(FromWorker).decode(old) == Finished(7, "length", 12, 5, 0)


def test_status_from_an_older_supervisor_decodes_with_no_counts() -> None:
    old = msgspec.msgpack.encode({"type": "model_status", "name": "m", "state": "RUNNING", "seq": 1})
    status = msgspec.msgpack.Decoder(ModelStatus).decode(old)
    assert status.restarts == {} and status.last_exit_cause == "" and status.evicted == []


def test_unknown_tag_is_a_decode_error_not_a_crash() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.Decoder(FromWorker).decode(msgspec.msgpack.encode(["zz", 1]))
