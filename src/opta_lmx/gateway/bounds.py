"""Bounds every dialect puts on the numbers and lists of a request, so that no value the types
allow can reach the engine and fail there (a 400 naming the field instead of a 500).

``max_tokens`` is bounded by the room the prompt leaves in the model's context, as mlx-lm and
llama.cpp do (a larger value is not an error; the reply ends with ``length`` there); the bound
here only keeps the number a 32-bit one.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

# OpenAI's seeds are 64-bit signed integers; the engine maps them onto its unsigned key.
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
MaxTokens = Annotated[int, Meta(ge=1, le=2**31 - 1)]
StopString = Annotated[str, Meta(min_length=1, max_length=1024)]
MAX_MESSAGES = 10_000
MAX_TOOLS = 1_024
MAX_STOPS = 16  # Anthropic's and Ollama's lists (OpenAI's is 4)
MAX_LOGIT_BIAS = 300  # entries, as OpenAI allows
