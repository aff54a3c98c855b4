from pathlib import Path

import pytest

from opta_lmx.supervisor.memory_policy import (
    Admit,
    Evict,
    Kill,
    Limits,
    Refuse,
    Trim,
    WorkerView,
    admit,
    estimate_need,
    police,
)

MB = 1 << 20


def w(name: str, used: int, busy: bool = False, pinned: bool = False, last_used: float = 0.0) -> WorkerView:
    return WorkerView(name, used * MB, busy, pinned, last_used)


@pytest.mark.parametrize(
    ("need", "loaded", "budget", "max_loaded", "expected"),
    [
        # fits as is
        (100, [w("a", 100)], 300, 0, Admit([])),
        # evict the least recently used idle one, only as many as needed
        (150, [w("old", 100, last_used=1), w("new", 100, last_used=2)], 300, 0, Admit(["old"])),
        (250, [w("old", 100, last_used=1), w("new", 100, last_used=2)], 300, 0, Admit(["old", "new"])),
        # a busy model is never evicted; the idle one goes even if it was used more recently
        (150, [w("busy", 100, busy=True, last_used=1), w("idle", 100, last_used=9)], 300, 0, Admit(["idle"])),
        # busy and pinned models cannot make room: refuse, saying how much is needed and free
        (250, [w("busy", 100, busy=True), w("pin", 100, pinned=True)], 300, 0, Refuse(250 * MB, 100 * MB, "")),
        # max_loaded_models evicts by count even when memory would fit
        (10, [w("a", 10, last_used=5), w("b", 10, last_used=1)], 1000, 2, Admit(["b"])),
        (10, [w("a", 10, busy=True), w("b", 10, pinned=True)], 1000, 2, Refuse(10 * MB, 980 * MB, "")),
        # larger than the whole budget
        (500, [], 300, 0, Refuse(500 * MB, 300 * MB, "")),
    ],
)
def test_admission(need: int, loaded: list[WorkerView], budget: int, max_loaded: int, expected: Admit | Refuse) -> None:
    decision = admit(need * MB, loaded, budget * MB, max_loaded)
    assert type(decision) is type(expected)
    if isinstance(expected, Admit):
        assert decision == expected
    else:
        assert isinstance(decision, Refuse)
        assert (decision.needed, decision.available) == (expected.needed, expected.available)
        assert decision.reason


LIMITS = Limits(budget=1000 * MB, soft=600 * MB, hard=800 * MB, hard_readings=3)


@pytest.mark.parametrize(
    ("workers", "over_hard", "expected_actions", "expected_count"),
    [
        # under the soft limit: nothing, and the hard counter resets
        ([w("a", 300), w("b", 200)], 2, [], 0),
        # between soft and hard: trim, largest first
        ([w("a", 300), w("b", 400)], 0, [Trim("b"), Trim("a")], 0),
        # over hard, first and second readings: only trim (hysteresis)
        ([w("a", 500), w("b", 400)], 0, [Trim("a"), Trim("b")], 1),
        ([w("a", 500), w("b", 400)], 1, [Trim("a"), Trim("b")], 2),
    ],
)
def test_policing_hysteresis(workers, over_hard, expected_actions, expected_count) -> None:
    assert police(workers, LIMITS, over_hard) == (expected_actions, expected_count)


def test_third_reading_over_hard_evicts_the_lru_idle_worker() -> None:
    workers = [w("busy", 500, busy=True, last_used=0), w("idle-old", 200, last_used=1), w("idle-new", 200, last_used=5)]
    actions, count = police(workers, LIMITS, over_hard=2)
    assert count == 0
    assert [type(a) for a in actions] == [Evict] and actions[0].name == "idle-old"


def test_last_resort_kills_the_largest_unpinned_worker() -> None:
    workers = [w("pinned", 600, busy=True, pinned=True), w("busy-small", 150, busy=True), w("busy-big", 250, busy=True)]
    actions, _ = police(workers, LIMITS, over_hard=2)
    assert len(actions) == 1 and isinstance(actions[0], Kill) and actions[0].name == "busy-big"


def test_estimate_counts_weights_factor_headroom_and_overhead(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    assert estimate_need(tmp_path, factor=1.5, kv_headroom=100, process_overhead=7) == 1500 + 100 + 7
    assert estimate_need(tmp_path / "missing", 1.5, 100, 7) == 107


def test_a_gguf_models_kv_caches_are_sized_from_its_header(smollm2_gguf: Path) -> None:
    from opta_lmx.supervisor.gguf_header import kv_cache_bytes

    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dimensions, K and V in f16.
    per_token = 30 * 3 * (64 + 64) * 2
    assert kv_cache_bytes(smollm2_gguf, 2, 1000) == 2 * 1024 * per_token  # rounded up to 256 tokens
    assert kv_cache_bytes(smollm2_gguf, 1, 0) == 8192 * per_token  # 0: the training context
    assert kv_cache_bytes(smollm2_gguf, 1, 100_000) == 8192 * per_token  # capped by it
    assert kv_cache_bytes(smollm2_gguf.parent / "missing.gguf", 1, 0) is None
