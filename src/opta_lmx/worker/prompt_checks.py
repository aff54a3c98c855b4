"""What every engine checks of a rendered prompt before it accepts a request, with the same
answers whatever the engine: it must fit the context, and its token ids must be in the vocabulary."""

from __future__ import annotations

from opta_lmx.proto import Failed, Generate


class Refused(Exception):
    """The request cannot start; ``failed`` is the answer to send."""

    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.message)
        self.failed = failed


def max_tokens_for(request: Generate, prompt: list[int], ctx_len: int, vocab_size: int) -> int:
    """The request's ``max_tokens``, cut to the room the prompt leaves in the context; raises
    ``Refused`` when the prompt does not fit, or a token id (prompt or logit bias) is not one of
    the model's."""
    rid, params = request.request_id, request.params
    room = ctx_len - len(prompt)
    if room <= 0 or not prompt:
        raise Refused(Failed(
            rid,
            "context_length_exceeded",
            f"This model's maximum context length is {ctx_len} tokens, but the messages resulted in "
            f"{len(prompt)} tokens.",
        ))
    max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
    if max_tokens < 1:  # the gateway refuses these; a direct caller gets a clear answer
        raise Refused(Failed(rid, "invalid_request", "max_tokens must be at least 1"))
    if any(not 0 <= t < vocab_size for t in (*(request.prompt_ids or ()), *params.logit_bias)):
        raise Refused(Failed(rid, "invalid_request", f"token ids must be in 0..{vocab_size - 1}"))
    return max_tokens
