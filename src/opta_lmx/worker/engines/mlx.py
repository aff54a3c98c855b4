"""The MLX engine: mlx-lm models with continuous batching (mlx-lm's ``BatchGenerator``).

Every request being decoded shares one batch: a ``step`` call runs one decode step for all of them,
then prefills one chunk of the prompts waiting to join, so the ones already generating keep getting
a token every step while a newcomer is prefilled (that step just takes longer). A request that ends
in this engine (stop string, cancel) leaves the batch with ``BatchGenerator.remove``; one that ends
in the generator (eos, ``max_tokens``) has already left it.

Text is made here, not in the generator: one ``TextStream`` per request (detokenizer, reasoning
split, stop strings, tool calls), so stop strings split across tokens are never emitted.

Every request that leaves the batch leaves its KV cache in the prompt cache (``mlx_prompt_cache``);
a new prompt starts from the longest cached prefix of its tokens and prefills only the rest.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import BatchGenerator, GenerationBatch
from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

from opta_lmx.config import EngineOptions
from opta_lmx.proto import Failed, Finished, FromWorker, Generate, MemoryReading, SamplingParams, Started, TokenChunk
from opta_lmx.worker.engines.mlx_grammar import GrammarError, Grammars
from opta_lmx.worker.engines.mlx_prompt_cache import PromptCache
from opta_lmx.worker.engines.mlx_sampling import LogprobReader, logits_processors_for, sampler_for
from opta_lmx.worker.engines.mlx_sequential import SequenceFailed, SequentialGenerator
from opta_lmx.worker.prompt_checks import Refused, max_tokens_for
from opta_lmx.worker.reasoning import ReasoningSplitter, starts_inside
from opta_lmx.worker.stops import StopMatcher
from opta_lmx.worker.text_stream import TextStream
from opta_lmx.worker.tool_calls import ToolCallSplitter, template_messages, template_tools

_DEFAULT_CTX_LEN = 4096
_SOLO_UIDS = 1 << 40  # the solo generator's request ids start here, apart from the batch's


@dataclass
class _Request:
    request_id: int
    uid: int  # the generator's id for it
    prompt_tokens: int
    max_tokens: int
    text: TextStream
    top_logprobs: int | None  # None: no logprobs asked for
    cached_tokens: int  # prompt tokens taken from the prompt cache
    generated: int = 0


class MlxEngine:
    """An mlx-lm model behind the ``Engine`` contract, decoding all requests as one batch.

    ``options.batch_size`` caps the requests decoded together (more wait their turn, in order,
    already ``Started``); ``prefill_batch_size`` caps the prompts prefilled in one step, and
    ``prefill_step_size`` the tokens of each prompt per step, which bounds how much one step's
    prefill can delay the tokens of the others. ``prompt_cache_entries`` and
    ``prompt_cache_bytes`` bound the prompt cache (``prompt_cache``), which ``trim`` empties.
    ``kv_bits`` or a ``draft_model`` switch to one request at a time (``mlx_sequential``).
    """

    def __init__(self, model_name: str, path: str, options: EngineOptions = EngineOptions()) -> None:
        self.model_name = model_name
        template = {"chat_template": options.chat_template} if options.chat_template else None
        self._model, self._tokenizer, config = load(path, tokenizer_config=template, return_config=True)
        self.ctx_len = int(config.get("max_position_embeddings") or _DEFAULT_CTX_LEN)
        self._eos = frozenset(self._tokenizer.eos_token_ids)
        self._options = options
        # A draft model must share the tokenizer (its proposals are token ids of the model's).
        self._draft = load(options.draft_model)[0] if options.draft_model else None
        self._batch = self._new_batch()
        # A request alone in the engine runs through generate_step (about 12 % faster than a
        # batch of one), and moves into the batch when another arrives.
        self._solo = None if options.sequential or options.max_kv_size else SequentialGenerator(
            self._model,
            stop_tokens=[[t] for t in self._eos],
            prefill_step_size=options.prefill_step_size,
            kv_bits=None,
            kv_group_size=64,
            quantized_kv_start=0,
            keep_caches=True,
            first_uid=_SOLO_UIDS,
            on_prefill=self._prefilled,
        )
        entries = 0 if options.sequential else options.prompt_cache_entries
        self.prompt_cache = PromptCache(entries, options.prompt_cache_bytes)
        self._requests: dict[int, _Request] = {}
        self._by_uid: dict[int, _Request] = {}
        self.tokens_generated = 0
        self._prefill_chunks = 0
        self._logprobs = LogprobReader(self._tokenizer)
        tokenizer = self._tokenizer
        self._think = (tokenizer.think_start, tokenizer.think_end) if tokenizer.has_thinking else None
        self._grammars = Grammars(tokenizer)

    def _new_batch(self) -> BatchGenerator | SequentialGenerator:
        options = self._options
        if options.sequential:
            return SequentialGenerator(
                self._model,
                stop_tokens=[[t] for t in self._eos],
                prefill_step_size=options.prefill_step_size,
                kv_bits=options.kv_bits or None,
                kv_group_size=options.kv_group_size,
                quantized_kv_start=options.quantized_kv_start,
                draft_model=self._draft,
                num_draft_tokens=options.num_draft_tokens,
                on_prefill=self._prefilled,
            )
        return BatchGenerator(
            self._model,
            stop_tokens=[[t] for t in self._eos],
            completion_batch_size=options.batch_size,
            prefill_batch_size=options.prefill_batch_size,
            prefill_step_size=options.prefill_step_size,
            max_kv_size=options.max_kv_size or None,
        )

    @property
    def active(self) -> int:
        return len(self._requests)

    @property
    def progress(self) -> int:
        return self.tokens_generated + self._prefill_chunks

    def _prefilled(self) -> None:
        self._prefill_chunks += 1

    def prompt_tokens(self, request: Generate) -> list[int]:
        """The chat template's rendering of the messages, or a completion's prompt as it is."""
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        if request.prompt is not None:
            tokenizer = self._tokenizer
            bos = tokenizer.bos_token is not None and not request.prompt.startswith(tokenizer.bos_token)
            return list(tokenizer.encode(request.prompt, add_special_tokens=bos))
        tools = template_tools(request.tools) or None
        messages = template_messages(request.messages)
        extra = {} if request.thinking is None else {"enable_thinking": request.thinking}
        return list(self._tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, **extra))

    def submit(self, request: Generate) -> list[FromWorker]:
        rid = request.request_id
        try:
            prompt = self.prompt_tokens(request)
        except Exception as exc:  # the chat template rejected the messages (jinja raise)
            return [Failed(rid, "invalid_request", f"chat template failed: {exc}")]
        try:
            constraint = self._grammars.for_request(request)
        except GrammarError as exc:
            return [Failed(rid, "invalid_request", str(exc))]
        except Exception as exc:  # llguidance cannot take this tokenizer, or another fault
            return [Failed(rid, "engine_error", f"constrained decoding unavailable: {type(exc).__name__}: {exc}")]
        reasoning = self._reasoning_splitter(prompt)
        if constraint and reasoning is not None and reasoning.inside:
            # A grammar holds from the first token: close the thinking block the template opened
            # (as templates do with thinking switched off), so the constrained text is the answer.
            prompt = prompt + self._tokenizer.encode(self._think[1] + "\n\n", add_special_tokens=False)
            reasoning = self._reasoning_splitter(prompt)
        try:
            max_tokens = max_tokens_for(request, prompt, self.ctx_len, len(self._tokenizer))
        except Refused as exc:
            return [exc.failed]
        params = request.params
        cache, cached = self.prompt_cache.fetch(prompt)
        sampler = sampler_for(params)
        # The grammar's mask comes last: nothing after it may make a banned token likely.
        processors = logits_processors_for(params, self.ctx_len) + constraint
        solo = self._fits_solo(params, bool(constraint), cached)
        if not solo:
            self._leave_solo()
        (uid,) = (self._solo if solo else self._batch).insert(
            [prompt[cached:]],
            max_tokens=[max_tokens],
            caches=[cache if cache is not None else self._fresh_cache()],  # None: the generator's own
            all_tokens=[prompt[:cached]],  # what the cache holds (penalties see the whole prompt)
            samplers=[sampler],
            logits_processors=[processors],
        )
        entry = _Request(
            request_id=rid,
            uid=uid,
            prompt_tokens=len(prompt),
            max_tokens=max_tokens,
            text=TextStream(self._tokenizer.detokenizer, StopMatcher(params.stop), reasoning, self._tool_splitter(request)),
            top_logprobs=params.top_logprobs if params.logprobs else None,
            cached_tokens=cached,
        )
        self._requests[rid] = entry
        self._by_uid[uid] = entry
        # Answered before the prefill, so the client gets its HTTP status and headers at once.
        out: list[FromWorker] = [Started(rid, len(prompt), cached)]
        if request.echo:
            out.append(TokenChunk(rid, self._tokenizer.decode(prompt), 0))
        return out

    def _fits_solo(self, params: SamplingParams, constrained: bool, cached: int) -> bool:
        """Alone, a request goes solo. Grammars and seeded draws would not survive the move into
        the batch (their state runs one token ahead there); penalties over a cached prefix would
        not see it (generate_step counts only the tokens it is given)."""
        penalties = params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1.0
        return (
            self._solo is not None
            and not self._requests
            and not constrained
            and (params.seed is None or params.temperature == 0)
            and not (cached and penalties)
        )

    def _leave_solo(self) -> None:
        """Move the request running solo (if any) into the batch, with its KV cache."""
        if self._solo is None or not self._solo.active:
            return
        for request in [r for r in self._requests.values() if r.uid >= _SOLO_UIDS]:
            moving = self._solo.detach(request.uid)
            if moving is None:
                continue
            (uid,) = self._batch.insert(
                [moving.prompt],
                max_tokens=[moving.max_tokens],
                caches=[moving.cache if moving.cache is not None else self._fresh_cache()],
                all_tokens=[moving.all_tokens],
                samplers=[moving.sampler],
                logits_processors=[moving.processors],
            )
            del self._by_uid[request.uid]
            request.uid = uid
            self._by_uid[uid] = request

    def _fresh_cache(self) -> list[Any] | None:
        """With ``max_kv_size``, the model's cache with its full-attention layers bounded to that
        many tokens; else None (the generator builds the model's own). mlx-lm's
        ``make_prompt_cache`` drops ``max_kv_size`` for models that build their own caches, which
        most do, so the bound is applied here."""
        size = self._options.max_kv_size
        if not size:
            return None
        return [RotatingKVCache(max_size=size, keep=4) if type(c) is KVCache else c for c in make_prompt_cache(self._model)]

    def _tool_splitter(self, request: Generate) -> ToolCallSplitter | None:
        tokenizer = self._tokenizer
        if not request.tools or not tokenizer.has_tool_calling:
            return None
        tools = template_tools(request.tools)
        return ToolCallSplitter(tokenizer.tool_call_start, tokenizer.tool_call_end, tokenizer.tool_parser, tools)

    def _reasoning_splitter(self, prompt: list[int]) -> ReasoningSplitter | None:
        if self._think is None:
            return None
        start, end = self._think
        tail = self._tokenizer.decode(prompt[-16:])  # enough to see whether the prompt opened it
        return ReasoningSplitter(start, end, starts_inside(tail, start, end))

    def step(self) -> list[FromWorker]:
        out: list[FromWorker] = []
        generator = self._solo if self._solo is not None and self._solo.active else self._batch
        try:
            prefilled, generated = generator.next()
        except SequenceFailed as exc:  # one request's generation failed: the queue goes on
            request = self._by_uid.get(exc.uid)
            if request is None:
                return out
            self._forget(request)
            return [Failed(request.request_id, "engine_error", str(exc))]
        except Exception as exc:  # the batch's state is unknown after a fault: fail it, start anew
            self._batch = self._new_batch()
            self.prompt_cache.clear()  # with nothing carried over from that state either
            return out + self.abort_all("engine_error", f"{type(exc).__name__}: {exc}")
        self._prefill_chunks += len(prefilled)  # the batch's prompt chunks (the solo path reports its own)
        leaving = []
        for response in generated:
            if not self._take(response, out) and response.finish_reason is None:
                leaving.append(response.uid)  # it ended here, but the generator still holds it
            if response.finish_reason is not None:  # the generator let it go, with its cache
                self.prompt_cache.store(response.all_tokens, response.prompt_cache)
        if leaving:
            self._remove(leaving)
        return out

    def _remove(self, uids: list[int], keep: bool = True) -> None:
        """Take requests out of their generator, keeping their caches (a cut-off answer or a
        cancelled request's prompt is as good a prefix as any) unless ``keep`` is false."""
        solo = [u for u in uids if u >= _SOLO_UIDS]
        caches = self._batch.remove([u for u in uids if u < _SOLO_UIDS], return_prompt_caches=keep)
        if solo and self._solo is not None:
            caches.update(self._solo.remove(solo, return_prompt_caches=keep))
        for cache, tokens in caches.values():
            self.prompt_cache.store(tokens, cache)

    def _take(self, response: GenerationBatch.Response, out: list[FromWorker]) -> bool:
        """Handle one sampled token; True while its request goes on."""
        request = self._by_uid.get(response.uid)
        if request is None:
            return False
        try:
            # The generator's own verdict (eos, max_tokens) always agrees with ours; taking it as
            # a fallback means a request can never stay here after the generator dropped it.
            reason = self._advance(request, response, out) or response.finish_reason
            if reason is None:
                return True
            self._finish(request, reason, out)
        except Exception as exc:  # a fault in one request's text fails that request only
            self._forget(request)
            out.append(Failed(request.request_id, "engine_error", f"{type(exc).__name__}: {exc}"))
        return False

    def _advance(self, request: _Request, response: GenerationBatch.Response, out: list[FromWorker]) -> str | None:
        """Feed one token; the finish reason if the request ends with it."""
        token = response.token
        request.generated += 1  # every sampled token counts, eos included
        self.tokens_generated += 1
        if token in self._eos:
            return "stop"
        reasoning, text, calls = request.text.feed(token)
        if request.top_logprobs is not None:
            entry = self._logprobs.entry(token, response.logprobs, request.top_logprobs)
            out.append(TokenChunk(request.request_id, text, 1, [entry], reasoning, calls))
        elif text or reasoning or calls:
            out.append(TokenChunk(request.request_id, text, 1, None, reasoning, calls))
        if request.text.stopped:
            return "stop"
        if request.generated >= request.max_tokens:
            return "length"
        return None

    def _finish(self, request: _Request, reason: str, out: list[FromWorker]) -> None:
        self._forget(request)
        reasoning, tail, calls = request.text.finish()
        if request.text.stopped:  # also when the held-back tail completed a stop string
            reason = "stop"
        if reason == "stop" and request.text.called:
            reason = "tool_calls"
        if tail or reasoning or calls:
            out.append(TokenChunk(request.request_id, tail, 0, None, reasoning, calls))
        stop = request.text.stop_sequence if reason == "stop" else None
        out.append(
            Finished(request.request_id, reason, request.prompt_tokens, request.generated, request.cached_tokens, stop)
        )

    def _forget(self, request: _Request) -> None:
        self._requests.pop(request.request_id, None)
        self._by_uid.pop(request.uid, None)

    def cancel(self, request_id: int) -> list[FromWorker]:
        request = self._requests.get(request_id)
        if request is None:
            return []
        self._forget(request)
        self._remove([request.uid])
        return [Finished(request_id, "cancelled", request.prompt_tokens, request.generated, request.cached_tokens)]

    def abort_all(self, code: str, message: str) -> list[FromWorker]:
        out: list[FromWorker] = [Failed(rid, code, message) for rid in self._requests]
        if self._by_uid:
            self._remove(list(self._by_uid), keep=False)
        self._requests.clear()
        self._by_uid.clear()
        return out

    def memory(self) -> MemoryReading:
        return MemoryReading(
            mlx_active=mx.get_active_memory(),
            mlx_cache=mx.get_cache_memory(),
            mlx_peak=mx.get_peak_memory(),
        )

    def trim(self) -> None:
        self.prompt_cache.clear()  # the memory is wanted: a cached prefix is only a saving
        gc.collect()
        mx.clear_cache()

