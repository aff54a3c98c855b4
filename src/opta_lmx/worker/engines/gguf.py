"""The GGUF engine: llama.cpp models through llama-cpp-python, with continuous batching.

One context holds ``slots`` sequences, each with its own KV cache (``gguf_context``). Every
``step`` is one ``llama_decode``: one token for each sequence being decoded, plus chunks of the
prompts of requests that just got a slot, as many prompt tokens as the batch has room for; a
request waits (already ``Started``) while every slot is taken, and its slot is free again the
moment it ends. Tokens are chosen in numpy from the logits (``gguf_sampling``), with the grammar
masks of the shared ``worker/grammar.py``; text is made by the shared ``TextStream``.

A slot keeps its KV cache after its request ends. A new request takes the free slot whose cached
tokens share the longest prefix with its prompt, and prefills only the rest (the next turn of a
conversation prefills only the answer and the new message): that is the prompt cache, reported as
``cached_tokens``.
"""

from __future__ import annotations

import gc
import itertools
import warnings
from collections import deque
from dataclasses import dataclass, field

import llguidance
import numpy as np

from opta_lmx.config import EngineOptions
from opta_lmx.engine_choice import gguf_file
from opta_lmx.proto import Failed, Finished, FromWorker, Generate, MemoryReading, Started, TokenChunk, TokenLogprob, TokenLogprobs
from opta_lmx.worker.engines.gguf_context import ContextSettings, DecodeError, SlotContext, release_heap
from opta_lmx.worker.engines.gguf_sampling import RowSampler, log_softmax
from opta_lmx.worker.engines.gguf_tokenizer import GgufTokenizer, NoChatTemplate
from opta_lmx.worker.grammar import Grammars
from opta_lmx.worker.kv_disk import shared_prefix
from opta_lmx.worker.prompt_checks import Refused, accept
from opta_lmx.worker.text_stream import TextStream
from opta_lmx.worker.tool_calls import template_messages, template_tools


@dataclass(eq=False)
class _Request:
    request_id: int
    prompt: list[int]
    max_tokens: int
    text: TextStream
    sampler: RowSampler
    top_logprobs: int | None  # None: no logprobs asked for
    slot: int = -1
    prefilled: int = 0  # prompt tokens in the slot's KV cache
    cached_tokens: int = 0  # of those, taken from the slot's earlier contents
    next_token: int = -1  # sampled, not yet decoded
    generated: int = 0


@dataclass
class _Slot:
    tokens: list[int] = field(default_factory=list)  # what its KV cache holds, in order
    request: _Request | None = None
    last_used: int = 0


class GgufEngine:
    """A GGUF model behind the ``Engine`` contract, decoding all requests in one batch.

    Options: ``slots`` (requests decoded together), ``slot_context`` (tokens each may hold:
    ``ctx_len``), ``threads``, ``n_batch``/``n_ubatch`` (tokens per decode call and per compute
    pass), ``flash_attn``, ``chat_template`` (replaces the file's), ``prompt_cache_entries`` (0
    turns the reuse of a slot's cached prefix off).
    """

    def __init__(self, model_name: str, path: str, options: EngineOptions = EngineOptions()) -> None:
        self.model_name = model_name
        self._context = SlotContext(str(gguf_file(path)), ContextSettings(
            slots=options.slots,
            slot_context=options.slot_context,
            threads=options.threads,
            n_batch=options.n_batch,
            n_ubatch=options.n_ubatch,
            flash_attn=options.flash_attn,
        ))
        self.ctx_len = self._context.slot_context
        try:
            tokenizer = self._tokenizer = GgufTokenizer(self._context.model, options.chat_template)
            if options.chat_template:  # a configured template that does not render fails the load
                tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
        except Exception:
            self._context.close()
            raise
        self._eos = tokenizer.eos_token_ids
        self._reuse = options.prompt_cache_entries > 0
        self._slots = [_Slot() for _ in range(self._context.slots)]
        self._waiting: deque[_Request] = deque()
        self._requests: dict[int, _Request] = {}
        self._grammars = Grammars(tokenizer, self._ll_tokenizer)
        self._clock = itertools.count(1)
        self.tokens_generated = 0
        self._prefill_chunks = 0

    def _ll_tokenizer(self) -> llguidance.LLTokenizer:
        from llguidance.llamacpp import lltokenizer_from_vocab

        with warnings.catch_warnings():  # it still calls llama_token_get_attr, deprecated in 0.3.x
            warnings.filterwarnings("ignore", "llama_token_get_attr", DeprecationWarning)
            return lltokenizer_from_vocab(self._tokenizer.vocab, eos_token=sorted(self._eos))

    @property
    def active(self) -> int:
        return len(self._requests)

    @property
    def progress(self) -> int:
        return self.tokens_generated + self._prefill_chunks

    def prompt_tokens(self, request: Generate) -> list[int]:
        """The chat template's rendering of the messages, or a completion's prompt as it is."""
        tokenizer = self._tokenizer
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        if request.prompt is not None:
            return tokenizer.prompt_tokens(request.prompt)
        tools = template_tools(request.tools) or None
        return tokenizer.apply_chat_template(template_messages(request.messages), tools=tools, thinking=request.thinking)

    def _render(self, request: Generate) -> list[int]:
        try:
            return self.prompt_tokens(request)
        except NoChatTemplate as exc:
            raise Refused(Failed(request.request_id, "invalid_request", str(exc))) from None

    def submit(self, request: Generate) -> list[FromWorker]:
        rid = request.request_id
        try:
            accepted = accept(request, self._tokenizer, self.ctx_len, self._render, self._grammars.mask_for)
        except Refused as exc:
            return [exc.failed]
        params, prompt = request.params, accepted.prompt
        entry = _Request(
            request_id=rid,
            prompt=prompt,
            max_tokens=accepted.max_tokens,
            text=accepted.text,
            sampler=RowSampler(params, self._context.n_vocab, prompt, accepted.grammar),
            top_logprobs=params.top_logprobs if params.logprobs else None,
        )
        self._requests[rid] = entry
        self._waiting.append(entry)
        # Answered before the prefill, so the client gets its HTTP status and headers at once.
        out: list[FromWorker] = [Started(rid, len(prompt))]
        if request.echo:
            out.append(TokenChunk(rid, self._tokenizer.decode(prompt), 0))
        return out

    def _admit(self) -> None:
        """Give free slots to waiting requests, in order; each takes the free slot whose cache
        shares the longest prefix with its prompt (the least recently used one if none does)."""
        while self._waiting:
            free = [i for i, s in enumerate(self._slots) if s.request is None]
            if not free:
                return
            request = self._waiting.popleft()
            # At least the prompt's last token is decoded again: its logits give the first token.
            limit = len(request.prompt) - 1
            head = np.asarray(request.prompt[:limit])
            shared = {i: shared_prefix(np.asarray(self._slots[i].tokens[:limit]), head) if self._reuse else 0 for i in free}
            index = max(free, key=lambda i: (shared[i], -self._slots[i].last_used))
            slot = self._slots[index]
            kept = self._context.keep_prefix(index, shared[index])
            del slot.tokens[kept:]
            slot.request = request
            request.slot = index
            request.prefilled = request.cached_tokens = kept

    def step(self) -> list[FromWorker]:
        self._admit()
        context = self._context
        rows: list[_Request] = []
        for slot in self._slots:
            request = slot.request
            if request is not None and request.next_token >= 0:
                context.add(request.slot, [request.next_token], len(slot.tokens), True)
                slot.tokens.append(request.next_token)
                rows.append(request)
        for slot in self._slots:
            request = slot.request
            if request is None or request.next_token >= 0 or context.room == 0:
                continue
            chunk = request.prompt[request.prefilled : request.prefilled + context.room]
            done = request.prefilled + len(chunk) == len(request.prompt)
            context.add(request.slot, chunk, request.prefilled, done)
            slot.tokens.extend(chunk)
            request.prefilled += len(chunk)
            self._prefill_chunks += 1
            if done:
                rows.append(request)
        if context.room == context.n_batch:  # nothing to run (every request is waiting)
            return []
        try:
            logits = context.decode()
        except DecodeError as exc:  # the context's state is unknown: fail everything, start empty
            context.clear()
            for slot in self._slots:
                slot.tokens.clear()
            return self.abort_all("engine_error", str(exc))
        out: list[FromWorker] = []
        tokens = self._choose(rows, logits, out)
        for request, (token, entry) in zip(rows, tokens):
            self._take(request, token, entry, out)
        return out

    def _choose(self, rows: list[_Request], logits: np.ndarray, out: list[FromWorker]) -> list[tuple[int, TokenLogprobs | None]]:
        """Each row's next token (and its logprobs entry when asked for). Greedy rows with
        nothing to apply share one vectorized argmax."""
        chosen: list[tuple[int, TokenLogprobs | None]] = [(-1, None)] * len(rows)
        plain = [i for i, r in enumerate(rows) if r.sampler.plain and r.top_logprobs is None]
        if plain:
            best = logits.argmax(axis=1).tolist()  # every row: cheaper than copying some out
            for i in plain:
                chosen[i] = (best[i], None)
        for i, request in enumerate(rows):
            if chosen[i][0] >= 0:
                continue
            processed = request.sampler.logits(logits[i])
            if request.top_logprobs is None:
                chosen[i] = (request.sampler.pick(processed), None)
                continue
            logprobs = log_softmax(processed)  # once, for the sampler and the reply
            token = request.sampler.pick(processed, logprobs)
            entry = self._logprobs(token, logprobs, request.top_logprobs)
            chosen[i] = (token, entry)
        return chosen

    def _logprobs(self, token: int, logprobs: np.ndarray, top: int) -> TokenLogprobs:
        """The reply's logprobs entry from the row's log-probabilities."""
        alternatives: list[TokenLogprob] = []
        if top > 0:
            ids = np.argpartition(-logprobs, top - 1)[:top]
            for tid in sorted(ids.tolist(), key=lambda t: -logprobs[t]):
                if logprobs[tid] == -np.inf:  # banned (a grammar's mask): not an alternative
                    continue
                alternatives.append(TokenLogprob(*self._text_and_bytes(tid, float(logprobs[tid]))))
        return TokenLogprobs(*self._text_and_bytes(token, float(logprobs[token])), alternatives)

    def _text_and_bytes(self, token: int, logprob: float) -> tuple[str, float, list[int]]:
        raw = self._tokenizer.pieces.piece(token)
        return raw.decode("utf-8", "replace"), logprob, list(raw)

    def _take(self, request: _Request, token: int, entry: TokenLogprobs | None, out: list[FromWorker]) -> None:
        """Hand one chosen token to its request; a request that ends frees its slot."""
        try:
            request.sampler.accept(token)
            reason = self._advance(request, token, entry, out)
        except Exception as exc:  # a fault in one request's text fails that request only
            self._release(request)
            out.append(Failed(request.request_id, "engine_error", f"{type(exc).__name__}: {exc}"))
            return
        if reason is None:
            request.next_token = token
        else:
            self._finish(request, reason, out)

    def _advance(self, request: _Request, token: int, entry: TokenLogprobs | None, out: list[FromWorker]) -> str | None:
        """Feed one token; the finish reason if the request ends with it."""
        request.generated += 1  # every sampled token counts, eos included
        self.tokens_generated += 1
        if token in self._eos:
            return "stop"
        chunk = request.text.token_chunk(request.request_id, token, entry)
        if chunk is not None:
            out.append(chunk)
        if request.text.stopped:
            return "stop"
        if request.generated >= request.max_tokens:
            return "length"
        return None

    def _finish(self, request: _Request, reason: str, out: list[FromWorker]) -> None:
        self._release(request)
        out.extend(
            request.text.ending(request.request_id, reason, len(request.prompt), request.generated, request.cached_tokens)
        )

    def _release(self, request: _Request) -> None:
        """Forget the request and free its slot; the slot's KV cache stays for reuse."""
        self._requests.pop(request.request_id, None)
        if request.slot >= 0:
            slot = self._slots[request.slot]
            slot.request = None
            slot.last_used = next(self._clock)
            request.slot = -1
        else:
            try:
                self._waiting.remove(request)
            except ValueError:
                pass

    def cancel(self, request_id: int) -> list[FromWorker]:
        request = self._requests.get(request_id)
        if request is None:
            return []
        self._release(request)
        return [Finished(request_id, "cancelled", len(request.prompt), request.generated, request.cached_tokens)]

    def abort_all(self, code: str, message: str) -> list[FromWorker]:
        out: list[FromWorker] = [Failed(rid, code, message) for rid in self._requests]
        for request in list(self._requests.values()):
            self._release(request)
        return out

    def memory(self) -> MemoryReading:
        """No allocator figures of its own: llama.cpp allocates the KV cache once, at load; the
        worker adds the process's figures, which include it."""
        return MemoryReading()

    def trim(self) -> None:
        """Return freed heap memory to the system (the KV cache is allocated once and kept, so
        emptying the slots would free nothing)."""
        gc.collect()
        release_heap()

    def close(self) -> None:
        self._context.close()
