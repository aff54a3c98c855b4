"""The MLX engine: mlx-lm models, one decode step per active request per ``step`` call.

Requests are interleaved token by token (each has its own KV cache); continuous batching with
``BatchGenerator`` replaces this loop behind the same ``Engine`` contract.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, Iterator

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler

from opta_lmx.proto import Failed, Finished, FromWorker, Generate, MemoryReading, Started, TokenChunk
from opta_lmx.worker.stops import StopMatcher

_DEFAULT_CTX_LEN = 4096


@dataclass
class _Active:
    request_id: int
    prompt_tokens: int
    max_tokens: int
    tokens: Iterator[tuple[Any, Any]]
    detokenizer: Any
    stops: StopMatcher
    generated: int = 0
    started: bool = field(default=False)


class MlxEngine:
    def __init__(self, model_name: str, path: str) -> None:
        self.model_name = model_name
        self._model, self._tokenizer, config = load(path, return_config=True)
        self.ctx_len = int(config.get("max_position_embeddings") or _DEFAULT_CTX_LEN)
        self._eos = set(self._tokenizer.eos_token_ids)
        self._active: dict[int, _Active] = {}
        self._progress = 0

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def progress(self) -> int:
        return self._progress

    def prompt_tokens(self, request: Generate) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return list(self._tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def submit(self, request: Generate) -> list[FromWorker]:
        rid = request.request_id
        try:
            prompt = self.prompt_tokens(request)
        except Exception as exc:  # the chat template rejected the messages (jinja raise)
            return [Failed(rid, "invalid_request", f"chat template failed: {exc}")]
        room = self.ctx_len - len(prompt)
        if room <= 0 or not prompt:
            return [
                Failed(
                    rid,
                    "context_length_exceeded",
                    f"This model's maximum context length is {self.ctx_len} tokens, but the "
                    f"messages resulted in {len(prompt)} tokens.",
                )
            ]
        params = request.params
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        sampler = make_sampler(temp=params.temperature, top_p=params.top_p)
        tokens = generate_step(
            mx.array(prompt), self._model, max_tokens=max_tokens, sampler=sampler
        )
        self._active[rid] = _Active(
            request_id=rid,
            prompt_tokens=len(prompt),
            max_tokens=max_tokens,
            tokens=tokens,
            detokenizer=self._tokenizer.detokenizer,
            stops=StopMatcher(params.stop),
        )
        return []

    def step(self) -> list[FromWorker]:
        out: list[FromWorker] = []
        for request in list(self._active.values()):
            if not request.started:
                request.started = True
                out.append(Started(request.request_id, request.prompt_tokens))
            try:
                self._advance(request, out)
            except Exception as exc:  # an engine fault fails this request, not the worker
                del self._active[request.request_id]
                out.append(Failed(request.request_id, "engine_error", f"{type(exc).__name__}: {exc}"))
        return out

    def _advance(self, request: _Active, out: list[FromWorker]) -> None:
        token, _logprobs = next(request.tokens)
        request.generated += 1
        self._progress += 1
        if token in self._eos:
            self._finish(request, "stop", out)
            return
        request.detokenizer.add_token(token)
        text = request.stops.feed(request.detokenizer.last_segment)
        if text:
            out.append(TokenChunk(request.request_id, text, 1))
        if request.stops.stopped:
            self._finish(request, "stop", out, flush=False)
        elif request.generated >= request.max_tokens:
            self._finish(request, "length", out)

    def _finish(self, request: _Active, reason: str, out: list[FromWorker], flush: bool = True) -> None:
        del self._active[request.request_id]
        if flush:
            request.detokenizer.finalize()
            tail = request.stops.feed(request.detokenizer.last_segment)
            if request.stops.stopped:
                reason = "stop"
            else:
                tail += request.stops.flush()
            if tail:
                out.append(TokenChunk(request.request_id, tail, 0))
        out.append(Finished(request.request_id, reason, request.prompt_tokens, request.generated))

    def cancel(self, request_id: int) -> list[FromWorker]:
        request = self._active.pop(request_id, None)
        if request is None:
            return []
        return [Finished(request_id, "cancelled", request.prompt_tokens, request.generated)]

    def abort_all(self, code: str, message: str) -> list[FromWorker]:
        out: list[FromWorker] = [Failed(rid, code, message) for rid in self._active]
        self._active.clear()
        return out

    def memory(self) -> MemoryReading:
        return MemoryReading(
            mlx_active=mx.get_active_memory(),
            mlx_cache=mx.get_cache_memory(),
            mlx_peak=mx.get_peak_memory(),
        )

    def trim(self) -> None:
        gc.collect()
        mx.clear_cache()
