"""The MLX engine: mlx-lm models with continuous batching (mlx-lm's ``BatchGenerator``).

Every request being decoded shares one batch: a ``step`` call runs one decode step for all of them,
then prefills one chunk of the prompts waiting to join, so the ones already generating keep getting
a token every step while a newcomer is prefilled (that step just takes longer). A request that ends
in this engine (stop string, cancel) leaves the batch with ``BatchGenerator.remove``; one that ends
in the generator (eos, ``max_tokens``) has already left it.

Text is made here, not in the generator: one ``TextStream`` per request (detokenizer, reasoning
split, stop strings, tool calls), so stop strings split across tokens are never emitted.

Every request that leaves the batch leaves its KV cache in the prompt cache (``mlx_prompt_cache``),
and a copy as soon as its prompt is prefilled; a new prompt starts from the longest cached prefix
of its tokens and prefills only the rest. A request whose prefix is on its way (another request
prefilling it, a disk-tier read: ``mlx_kv_reuse``) is ``Started`` and parked until it arrives.
"""

from __future__ import annotations

import gc
from typing import Any

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import BatchGenerator, GenerationBatch
from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

from opta_lmx.config import EngineOptions
from opta_lmx.proto import Failed, Finished, FromWorker, Generate, MemoryReading, Started, TokenChunk
from opta_lmx.worker.engines import mlx_cpu_attention
from opta_lmx.worker.engines.mlx_grammar import Grammars
from opta_lmx.worker.engines.mlx_kv_disk import DiskTier
from opta_lmx.worker.engines.mlx_kv_reuse import KVReuse, Prefilling
from opta_lmx.worker.engines.mlx_prompt_cache import PromptCache
from opta_lmx.worker.engines.mlx_requests import PARKED, Running, RequestReader
from opta_lmx.worker.engines.mlx_sampling import LogprobReader
from opta_lmx.worker.engines.mlx_sequential import SequenceFailed, SequentialGenerator

_DEFAULT_CTX_LEN = 4096
_SOLO_UIDS = 1 << 40  # the solo generator's request ids start here, apart from the batch's
# How long an engine with nothing else to run waits for a disk read per step (a Cancel still gets
# through between two waits).
_READ_WAIT = 0.01


class MlxEngine:
    """An mlx-lm model behind the ``Engine`` contract, decoding all requests as one batch.

    ``options.batch_size`` caps the requests decoded together (more wait their turn, in order,
    already ``Started``); ``prefill_batch_size`` caps the prompts prefilled in one step, and
    ``prefill_step_size`` the tokens of each prompt per step, which bounds how much one step's
    prefill can delay the tokens of the others. ``prompt_cache_entries`` and
    ``prompt_cache_bytes`` bound the prompt cache (``prompt_cache``), which ``trim`` empties;
    ``kv_disk_bytes`` and ``kv_disk_dir`` its disk tier, which ``close`` fills.
    ``kv_bits`` or a ``draft_model`` switch to one request at a time (``mlx_sequential``).
    """

    def __init__(self, model_name: str, path: str, options: EngineOptions = EngineOptions()) -> None:
        self.model_name = model_name
        mlx_cpu_attention.install(options.cpu_attention)
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
        self.kv = KVReuse(self.prompt_cache, DiskTier.open(model_name, path, options), self._model_caches)
        self._parked: list[Running] = []
        self._requests: dict[int, Running] = {}
        self._by_uid: dict[int, Running] = {}
        self.tokens_generated = 0
        self._prefill_chunks = 0
        self._logprobs = LogprobReader(self._tokenizer)
        self._grammars = Grammars(self._tokenizer)
        self._reader = RequestReader(self._tokenizer, self.ctx_len, self._grammars)

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
        return self._reader.prompt_tokens(request)

    def submit(self, request: Generate) -> list[FromWorker]:
        rid = request.request_id
        prepared = self._reader.prepare(request)
        if isinstance(prepared, Failed):
            return [prepared]
        entry = Running(rid, prepared)
        waiting = self.kv.plan(prepared.prompt, self._prefilling())
        self._requests[rid] = entry
        if waiting is None:
            try:
                self._insert(entry)
            except Exception:
                self._forget(entry)
                raise
        else:  # its prefix is on its way: it joins a generator when that has come
            entry.waiting, entry.cached_tokens = waiting, waiting.expected
            self._parked.append(entry)
        # Answered before the prefill, so the client gets its HTTP status and headers at once.
        out: list[FromWorker] = [Started(rid, entry.prompt_tokens, entry.cached_tokens)]
        if request.echo:
            out.append(TokenChunk(rid, self._tokenizer.decode(prepared.prompt), 0))
        return out

    def _insert(self, request: Running) -> None:
        """Put a request into the solo path or the batch, from the best cache there is now."""
        prepared = request.prepared
        prompt = prepared.prompt
        cache, cached = self.kv.start(prompt, request.waiting)
        solo = self._fits_solo(request, cached)
        if not solo:
            self._leave_solo()
        (uid,) = (self._solo if solo else self._batch).insert(
            [prompt[cached:]],
            max_tokens=[prepared.max_tokens],
            caches=[cache if cache is not None else self._fresh_cache()],  # None: the generator's own
            all_tokens=[prompt[:cached]],  # what the cache holds (penalties see the whole prompt)
            samplers=[prepared.sampler],
            logits_processors=[prepared.processors],
        )
        request.uid, request.cached_tokens, request.waiting = uid, cached, None
        self._by_uid[uid] = request

    def _prefilling(self) -> list[Prefilling]:
        """Requests in a generator whose prompt is not computed yet (no token so far)."""
        return [
            Prefilling(r.request_id, r.prepared.prompt, r.prompt_tokens - r.cached_tokens)
            for r in self._requests.values()
            if r.uid != PARKED and r.generated == 0
        ]

    def _unpark(self) -> list[FromWorker]:
        out: list[FromWorker] = []
        prefilling = {p.request_id for p in self._prefilling()}
        for request in [r for r in self._parked if r.waiting is not None and self.kv.ready(r.waiting, prefilling)]:
            self._parked.remove(request)
            try:
                self._insert(request)
            except Exception as exc:  # it fails alone; the others go on
                self._forget(request)
                out.append(Failed(request.request_id, "engine_error", f"{type(exc).__name__}: {exc}"))
        return out

    def _fits_solo(self, request: Running, cached: int) -> bool:
        """Alone in a generator, a request goes solo. Grammars and seeded draws would not survive
        the move into the batch (their state runs one token ahead there); penalties over a cached
        prefix would not see it (generate_step counts only the tokens it is given)."""
        params = request.prepared.params
        penalties = params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1.0
        return (
            self._solo is not None
            and not any(r.uid != PARKED for r in self._requests.values() if r is not request)
            and not request.prepared.constrained
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

    def _model_caches(self) -> list[Any]:
        """An empty cache as this engine makes them (what a cache read from disk must match)."""
        return self._fresh_cache() or make_prompt_cache(self._model)

    def _fresh_cache(self) -> list[Any] | None:
        """With ``max_kv_size``, the model's cache with its full-attention layers bounded to that
        many tokens; else None (the generator builds the model's own). mlx-lm's
        ``make_prompt_cache`` drops ``max_kv_size`` for models that build their own caches, which
        most do, so the bound is applied here."""
        size = self._options.max_kv_size
        if not size:
            return None
        return [RotatingKVCache(max_size=size, keep=4) if type(c) is KVCache else c for c in make_prompt_cache(self._model)]

    def step(self) -> list[FromWorker]:
        out: list[FromWorker] = []
        self.kv.collect()
        if self._parked:
            out += self._unpark()
            if len(self._parked) == len(self._requests):  # nothing else to run: wait for the disk
                self.kv.wait_for_disk([r.waiting for r in self._parked if r.waiting], _READ_WAIT)
                return out
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
            self.kv.drop()  # with nothing carried over from that state either
            return out + self.abort_all("engine_error", f"{type(exc).__name__}: {exc}")
        self._prefill_chunks += len(prefilled)  # the batch's prompt chunks (the solo path reports its own)
        leaving = []
        for response in generated:
            self._share_prompt(response)
            if not self._take(response, out) and response.finish_reason is None:
                leaving.append(response.uid)  # it ended here, but the generator still holds it
            if response.finish_reason is not None:  # the generator let it go, with its cache
                self.kv.store(response.all_tokens, response.prompt_cache)
        if leaving:
            self._remove(leaving)
        return out

    def _share_prompt(self, response: GenerationBatch.Response) -> None:
        """On a request's first token (its prompt done), keep a copy of its cache for others."""
        request = self._by_uid.get(response.uid)
        if request is None or request.generated or response.finish_reason is not None or not self.prompt_cache.enabled:
            return  # a request that ends here leaves its whole cache anyway
        if response.uid >= _SOLO_UIDS:
            held = self._solo.peek(response.uid) if self._solo is not None else None
        else:
            held = self._batch.extract_cache([response.uid]).get(response.uid)
        if held is not None:
            cache, tokens = held
            self.kv.keep_snapshot(tokens, cache, request.prompt_tokens - request.cached_tokens)

    def _remove(self, uids: list[int], keep: bool = True) -> None:
        """Take requests out of their generator, keeping their caches (a cut-off answer or a
        cancelled request's prompt is as good a prefix as any) unless ``keep`` is false."""
        solo = [u for u in uids if u >= _SOLO_UIDS]
        caches = self._batch.remove([u for u in uids if u < _SOLO_UIDS], return_prompt_caches=keep)
        if solo and self._solo is not None:
            caches.update(self._solo.remove(solo, return_prompt_caches=keep))
        for cache, tokens in caches.values():
            self.kv.store(tokens, cache)

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

    def _advance(self, request: Running, response: GenerationBatch.Response, out: list[FromWorker]) -> str | None:
        """Feed one token; the finish reason if the request ends with it."""
        token = response.token
        request.generated += 1  # every sampled token counts, eos included
        self.tokens_generated += 1
        if token in self._eos:
            return "stop"
        entry = None
        if request.top_logprobs is not None:
            entry = self._logprobs.entry(token, response.logprobs, request.top_logprobs)
        chunk = request.text.token_chunk(request.request_id, token, entry)
        if chunk is not None:
            out.append(chunk)
        if request.text.stopped:
            return "stop"
        if request.generated >= request.prepared.max_tokens:
            return "length"
        return None

    def _finish(self, request: Running, reason: str, out: list[FromWorker]) -> None:
        self._forget(request)
        out.extend(
            request.text.ending(request.request_id, reason, request.prompt_tokens, request.generated, request.cached_tokens)
        )

    def _forget(self, request: Running) -> None:
        self._requests.pop(request.request_id, None)
        self._by_uid.pop(request.uid, None)

    def cancel(self, request_id: int) -> list[FromWorker]:
        request = self._requests.get(request_id)
        if request is None:
            return []
        self._forget(request)
        if request.uid == PARKED:
            self._parked.remove(request)
        else:
            self._remove([request.uid])
        return [Finished(request_id, "cancelled", request.prompt_tokens, request.generated, request.cached_tokens)]

    def abort_all(self, code: str, message: str) -> list[FromWorker]:
        out: list[FromWorker] = [Failed(rid, code, message) for rid in self._requests]
        if self._by_uid:
            self._remove(list(self._by_uid), keep=False)
        self._requests.clear()
        self._by_uid.clear()
        self._parked.clear()
        return out

    def memory(self) -> MemoryReading:
        return MemoryReading(
            mlx_active=mx.get_active_memory(),
            mlx_cache=mx.get_cache_memory(),
            mlx_peak=mx.get_peak_memory(),
        )

    def trim(self) -> None:
        self.kv.trim()  # the memory is wanted: a cached prefix is only a saving
        gc.collect()
        mx.clear_cache()

    def close(self) -> None:
        self.kv.close()

