"""Per-token log probabilities as OpenAI writes them (``token``, ``logprob``, ``bytes``,
``top_logprobs``), which the Responses API and Ollama's API write the same way."""

from __future__ import annotations

from typing import Any

from opta_lmx.proto import TokenLogprobs


def logprob_entries(entries: list[TokenLogprobs]) -> list[dict[str, Any]]:
    return [
        {
            "token": e.token,
            "logprob": e.logprob,
            "bytes": e.bytes,
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in e.top],
        }
        for e in entries
    ]
