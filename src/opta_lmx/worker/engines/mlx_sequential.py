"""One request at a time through mlx-lm's ``generate_step`` or ``speculative_generate_step``: the
path for KV-cache quantization and draft models, which ``BatchGenerator`` lacks (mlx_lm.server
also drops to one request at a time for them). It speaks the part of ``BatchGenerator``'s
interface that ``MlxEngine`` uses, so the engine's text, stop, tool and cancel handling is the
same on both paths; requests wait their turn in order, already ``Started``.

Requests with a grammar run without the draft model: a speculative step calls the logits
processors for draft positions that may be rolled back, and a grammar's state cannot step back.

The engine also uses it, without quantization or draft, for a request that has the engine to
itself: ``generate_step`` makes about 12 % more tokens a second than ``BatchGenerator`` with one
sequence. Then it keeps each request's KV cache (``keep_caches``) so that the request can move
into the batch when another one arrives (``detach``), and leave its cache for the prompt cache.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple

import mlx.core as mx
from mlx_lm.generate import generate_step, speculative_generate_step
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

from opta_lmx.worker.engines.mlx_grammar import GrammarProcessor


class SequenceFailed(Exception):
    """Generation of one request raised (e.g. a draft model over a cache that cannot be rolled
    back); the others, waiting their turn, are not touched."""

    def __init__(self, uid: int, error: Exception) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.uid = uid


@dataclass
class Response:
    """The fields of ``GenerationBatch.Response`` the engine reads."""

    uid: int
    token: int
    logprobs: mx.array
    finish_reason: str | None
    prompt_cache: Any = None  # with keep_caches, on the last token: the cache and what it holds
    all_tokens: Any = None


@dataclass
class _Sequence:
    uid: int
    prompt: list[int]
    max_tokens: int
    sampler: Callable[[mx.array], mx.array] | None
    processors: list[Any]
    cache: list[Any] | None = None  # a fresh cache to use (bounded by max_kv_size), or None
    steps: Iterator[tuple[Any, ...]] | None = None
    tokens: list[int] = field(default_factory=list)  # generated so far
    history: list[int] = field(default_factory=list)  # what ``cache`` already holds before ``prompt``

    @property
    def held(self) -> list[int]:
        """What the cache holds once started: generate_step feeds each token before yielding it."""
        return self.history + self.prompt + self.tokens


class Detached(NamedTuple):
    """A request taken out to continue elsewhere: ``prompt`` is what is left to feed, ``cache``
    (None if it never started) holds ``all_tokens``."""

    prompt: list[int]
    cache: list[Any] | None
    all_tokens: list[int]
    max_tokens: int
    sampler: Callable[[mx.array], mx.array] | None
    processors: list[Any]


class SequentialGenerator:
    def __init__(
        self,
        model: Any,
        *,
        stop_tokens: list[list[int]],
        prefill_step_size: int,
        kv_bits: int | None,
        kv_group_size: int,
        quantized_kv_start: int,
        draft_model: Any = None,
        num_draft_tokens: int = 3,
        keep_caches: bool = False,
        first_uid: int = 0,
        on_prefill: Callable[[], None] = lambda: None,
    ) -> None:
        self.model = model
        self._eos = {t for tokens in stop_tokens for t in tokens}
        self._prefill_step_size = prefill_step_size
        self._kv = {"kv_bits": kv_bits, "kv_group_size": kv_group_size, "quantized_kv_start": quantized_kv_start}
        self._draft_model = draft_model
        self._num_draft_tokens = num_draft_tokens
        self._waiting: deque[_Sequence] = deque()
        self._current: _Sequence | None = None
        self._next_uid = first_uid
        self._keep_caches = keep_caches
        self._on_prefill = on_prefill

    @property
    def active(self) -> bool:
        return self._current is not None or bool(self._waiting)

    def insert(
        self,
        prompts: list[list[int]],
        max_tokens: list[int],
        caches: list[Any] | None = None,
        all_tokens: list[list[int]] | None = None,
        samplers: list[Any] | None = None,
        logits_processors: list[list[Any]] | None = None,
    ) -> list[int]:
        uids = []
        for i, prompt in enumerate(prompts):
            history = list(all_tokens[i]) if all_tokens else []
            if history and not (self._keep_caches and caches and caches[i] is not None):
                raise ValueError("a cached prefix needs its cache, and keep_caches")
            uid, self._next_uid = self._next_uid, self._next_uid + 1
            sampler = samplers[i] if samplers else None
            processors = list(logits_processors[i]) if logits_processors else []
            cache = caches[i] if caches else None
            if cache is None and self._keep_caches:
                cache = make_prompt_cache(self.model)  # ours, so it can be kept and moved
            self._waiting.append(_Sequence(uid, list(prompt), max_tokens[i], sampler, processors, cache, history=history))
            uids.append(uid)
        return uids

    def _start(self, sequence: _Sequence) -> Iterator[tuple[Any, ...]]:
        prompt = mx.array(sequence.prompt, dtype=mx.uint32)
        common = dict(
            max_tokens=sequence.max_tokens,
            sampler=sequence.sampler,
            logits_processors=sequence.processors or None,
            prefill_step_size=self._prefill_step_size,
            **self._kv,
        )
        grammar = any(isinstance(p, GrammarProcessor) for p in sequence.processors)
        if self._draft_model is not None and not grammar:
            # Speculation rolls the cache back, which a rotating cache cannot: no max_kv_size here.
            cache = make_prompt_cache(self.model) + make_prompt_cache(self._draft_model)
            return speculative_generate_step(
                prompt,
                self.model,
                self._draft_model,
                num_draft_tokens=self._num_draft_tokens,
                prompt_cache=cache,
                **common,
            )
        return generate_step(
            prompt, self.model, prompt_cache=sequence.cache, prompt_progress_callback=self._prefilled, **common
        )

    def _prefilled(self, done: int, total: int) -> None:
        # The whole prefill runs inside the first ``next``: each chunk is reported as it ends, so
        # a long prompt shows progress (the hang watchdog reads it from another thread). The
        # first call (0 done) precedes any work; the last (all done) comes with the first token.
        if 0 < done < total:
            self._on_prefill()

    def next(self) -> tuple[list[Any], list[Response]]:
        if self._current is None:
            if not self._waiting:
                return [], []
            self._current = self._waiting.popleft()
        sequence = self._current
        try:
            if sequence.steps is None:
                sequence.steps = self._start(sequence)
            token, logprobs, *_ = next(sequence.steps)
        except StopIteration:  # never: a request leaves at its max_tokens-th token, before this
            self._current = None
            raise SequenceFailed(sequence.uid, RuntimeError("generation ended without a finish reason")) from None
        except Exception as exc:
            self._current = None
            raise SequenceFailed(sequence.uid, exc) from exc
        token = int(token)
        sequence.tokens.append(token)
        reason = None
        if token in self._eos:
            reason = "stop"
        elif len(sequence.tokens) >= sequence.max_tokens:
            reason = "length"
        if reason is None:
            return [], [Response(sequence.uid, token, logprobs, None)]
        self._current = None
        if not self._keep_caches:
            return [], [Response(sequence.uid, token, logprobs, reason)]
        return [], [Response(sequence.uid, token, logprobs, reason, sequence.cache, sequence.held)]

    def remove(self, uids: list[int], return_prompt_caches: bool = False) -> dict[int, Any]:
        gone = set(uids)
        self._waiting = deque(s for s in self._waiting if s.uid not in gone)
        caches = {}
        current = self._current
        if current is not None and current.uid in gone:
            self._current = None  # the generator object is dropped
            if return_prompt_caches and self._keep_caches and current.tokens:
                caches[current.uid] = (current.cache, current.held)
        return caches

    def peek(self, uid: int) -> tuple[list[Any], list[int]] | None:
        """The running request's cache (still in use: copy it before keeping it) and the tokens
        it holds; None if ``uid`` is not running or its cache is not kept."""
        current = self._current
        if current is None or current.uid != uid or not self._keep_caches or current.cache is None:
            return None
        return current.cache, current.held

    def detach(self, uid: int) -> Detached | None:
        """Take a request out, with what it needs to go on in another generator."""
        if self._current is not None and self._current.uid == uid:
            sequence, self._current = self._current, None
        else:
            sequence = next((s for s in self._waiting if s.uid == uid), None)
            if sequence is None:
                return None
            self._waiting.remove(sequence)
        if not sequence.tokens:  # never stepped: only a cached prefix (if any) to keep
            cache = sequence.cache if sequence.history else None
            return Detached(
                sequence.prompt, cache, sequence.history, sequence.max_tokens, sequence.sampler, sequence.processors
            )
        # The cache holds the last token too; the next generator must feed one token itself.
        trim_prompt_cache(sequence.cache, 1)
        held = sequence.held
        left = sequence.max_tokens - len(sequence.tokens)
        return Detached(held[-1:], sequence.cache, held[:-1], left, sequence.sampler, sequence.processors)
