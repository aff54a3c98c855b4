"""/api/ps's expires_at from the supervisor's keep-alive and last activity; model details."""

from __future__ import annotations

from datetime import datetime, timezone

from opta_lmx.gateway.ollama.facts import ModelFacts
from opta_lmx.gateway.ollama.models import details, expires_at
from opta_lmx.gateway.ollama.replies import timestamp
from opta_lmx.proto import ModelStatus

NOW = 1_800_000_000.0


def status(**fields: object) -> ModelStatus:
    return ModelStatus("m", "RUNNING", 1, **fields)  # type: ignore[arg-type]


def test_idle_models_expire_keep_alive_after_their_last_use() -> None:
    assert expires_at(status(keep_alive=300.0, last_used=NOW - 100), NOW) == NOW + 200
    assert expires_at(status(keep_alive=0.0, last_used=NOW - 1), NOW) == NOW - 1


def test_a_busy_model_expires_keep_alive_after_now() -> None:
    assert expires_at(status(keep_alive=300.0, last_used=NOW - 100, active_requests=2), NOW) == NOW + 300


def test_forever_is_ollamas_far_future() -> None:
    forever = expires_at(status(keep_alive=-1.0), NOW)  # now + Go's longest duration (~292 years)
    now_year = datetime.fromtimestamp(NOW, timezone.utc).year
    assert datetime.fromtimestamp(forever, timezone.utc).year == now_year + 292
    assert timestamp(forever).startswith(f"{now_year + 292}-")


def test_details_in_ollamas_words() -> None:
    facts = ModelFacts("gguf", "qwen2", 32768, 7_615_616_512, "Q4_K_M", 1, 0.0, "", ["completion"], {})
    assert details(facts) == {
        "parent_model": "",
        "format": "gguf",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": "7.6B",
        "quantization_level": "Q4_K_M",
    }
