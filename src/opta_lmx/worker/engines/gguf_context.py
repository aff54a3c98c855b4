"""llama.cpp models and contexts through llama-cpp-python's low-level API: the model's load and a
reusable token batch, shared by the generating context (``SlotContext``, one ``llama_decode`` a
step for every sequence in it) and the embedding context (``gguf_embedding_context``).

The generating context holds ``slots`` sequences (``n_seq_max``), each with its own part of the KV
cache (``kv_unified`` off: with one shared cache, five or more sequences made the logits drift, and
greedy outputs diverged from their one-at-a-time runs). A sequence's id is its slot number.

The batch arrays are numpy arrays the ``llama_batch`` struct points into, so a step fills them
with a few vectorized writes, and the logits of a step are read as one numpy view.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from typing import Any, Literal

import llama_cpp
import numpy as np

FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


class DecodeError(RuntimeError):
    """``llama_decode`` failed; the message has its status."""


@dataclass(frozen=True)
class ContextSettings:
    slots: int
    slot_context: int  # tokens per slot; 0: the model's training context
    threads: int  # 0: every core but one (the gateway's)
    n_batch: int
    n_ubatch: int
    flash_attn: str  # "auto", "on", "off"


def default_threads() -> int:
    """Every core this process may run on but one, which the gateway needs to stream."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity API
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _quiet(level: int, text: bytes, data: ctypes.c_void_p) -> None:
    """llama.cpp's log callback: warnings and errors only (its info lines are per tensor)."""
    if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
        os.write(2, text)


_LOG_CALLBACK = llama_cpp.llama_log_callback(_quiet)  # kept alive: llama.cpp holds the pointer


def load_model(path: str) -> llama_cpp.llama_model_p:
    """The model in the GGUF file at ``path``, every layer on the GPU where there is one."""
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = -1  # Metal on a Mac; nothing to offload on a CPU build
    model = llama_cpp.llama_model_load_from_file(path.encode(), model_params)
    if not model:
        raise ValueError(f"llama.cpp could not load {path!r} (not a GGUF model it supports?)")
    return model


def new_context(model: llama_cpp.llama_model_p, params: Any, threads: int, flash_attn: str, refusal: str) -> Any:
    """A context on ``model`` with ``params`` and what every context here sets (threads, 0: the
    default; flash attention; no performance counters). If llama.cpp cannot make it, the model is
    freed and ``ValueError(refusal)`` raised."""
    params.n_threads = params.n_threads_batch = threads or default_threads()
    params.flash_attn_type = FLASH_ATTN[flash_attn]
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise ValueError(refusal)
    return ctx


def free(ctx: Any, model: Any) -> None:
    """Free a context and its model (either may be None: already freed)."""
    if ctx:
        llama_cpp.llama_free(ctx)
    if model:
        llama_cpp.llama_model_free(model)


def tokenize(vocab: llama_cpp.llama_vocab_p, text: str, add_special: bool) -> list[int]:
    """Tokens of ``text``; special tokens written in it are parsed as such (as Hugging Face
    tokenizers do); ``add_special`` adds what the model wants around a text (its BOS; an
    encoder's [CLS] and [SEP])."""
    raw = text.encode("utf-8")
    capacity = len(raw) + 8
    tokens = (llama_cpp.llama_token * capacity)()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), tokens, capacity, add_special, True)
    if n < 0:
        capacity = -n
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(vocab, raw, len(raw), tokens, capacity, add_special, True)
    return list(tokens[:n])


def release_heap() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS): nothing to do
        pass


class TokenBatch:
    """A ``llama_batch`` of up to ``size`` tokens, each of one sequence, over numpy arrays."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._tokens = np.zeros(size, dtype=np.int32)
        self._positions = np.zeros(size, dtype=np.int32)
        self._n_seq_ids = np.ones(size, dtype=np.int32)
        self._seq_ids = np.zeros(size, dtype=np.int32)
        self._wants_outputs = np.zeros(size, dtype=np.int8)
        # Token i belongs to one sequence: seq_id[i] points at _seq_ids[i].
        base = self._seq_ids.ctypes.data
        int_p = ctypes.POINTER(ctypes.c_int32)
        self._seq_pointers = (int_p * size)(*(ctypes.cast(base + 4 * i, int_p) for i in range(size)))
        self.struct = llama_cpp.llama_batch(
            n_tokens=0,
            token=self._tokens.ctypes.data_as(int_p),
            embd=None,
            pos=self._positions.ctypes.data_as(int_p),
            n_seq_id=self._n_seq_ids.ctypes.data_as(int_p),
            seq_id=ctypes.cast(self._seq_pointers, ctypes.POINTER(int_p)),
            logits=self._wants_outputs.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )
        self.filled = 0  # tokens queued
        self.outputs = 0  # of those, how many have their outputs kept

    def add(self, sequence: int, tokens: list[int], start: int, outputs: Literal["last", "all", "none"]) -> None:
        """Queue ``tokens`` of ``sequence`` at positions ``start``...; ``outputs`` says whose
        outputs (logits, embeddings) are kept: "last", "all" or "none"."""
        at, n = self.filled, len(tokens)
        end = at + n
        self._tokens[at:end] = tokens
        self._positions[at:end] = np.arange(start, start + n, dtype=np.int32)
        self._seq_ids[at:end] = sequence
        self._wants_outputs[at:end] = 1 if outputs == "all" else 0
        if outputs == "last":
            self._wants_outputs[end - 1] = 1
        self.outputs += n if outputs == "all" else 1 if outputs == "last" else 0
        self.filled = end

    def take(self) -> int:
        """Seal the queued tokens for a decode call and start a new batch; how many outputs they
        keep."""
        self.struct.n_tokens = self.filled
        outputs, self.filled, self.outputs = self.outputs, 0, 0
        return outputs


class SlotContext:
    """The model, its context, and a reusable batch of up to ``n_batch`` tokens."""

    def __init__(self, path: str, settings: ContextSettings) -> None:
        model = self.model = load_model(path)
        train = llama_cpp.llama_model_n_ctx_train(model)
        per_slot = min(settings.slot_context or train, train) if train > 0 else settings.slot_context or 4096
        params = llama_cpp.llama_context_default_params()
        params.n_seq_max = settings.slots
        params.n_ctx = per_slot * settings.slots
        params.kv_unified = False
        params.n_batch = settings.n_batch
        params.n_ubatch = min(settings.n_ubatch, settings.n_batch)
        refusal = f"llama.cpp could not create a context of {params.n_ctx} tokens for {path!r}"
        self.ctx = ctx = new_context(model, params, settings.threads, settings.flash_attn, refusal)
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.slots = settings.slots
        self.slot_context = llama_cpp.llama_n_ctx_seq(ctx)
        self.threads = params.n_threads
        self.n_batch = llama_cpp.llama_n_batch(ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        # Positions a sliding-window layer still needs behind a reused prefix (0: none).
        self.swa = max(1, llama_cpp.llama_model_n_swa(model))
        self._batch = TokenBatch(self.n_batch)

    @property
    def room(self) -> int:
        """Tokens the batch being filled can still take."""
        return self.n_batch - self._batch.filled

    def add(self, slot: int, tokens: list[int], start: int, logits_for_last: bool) -> None:
        """Queue ``tokens`` of sequence ``slot`` at positions ``start``...; the last one's logits
        are kept when asked (they come back in the order the rows were added)."""
        self._batch.add(slot, tokens, start, "last" if logits_for_last else "none")

    def decode(self) -> np.ndarray:
        """Run the queued tokens; the kept logits, one row per output, as a read-only view valid
        until the next decode."""
        outputs = self._batch.take()
        status = llama_cpp.llama_decode(self.ctx, self._batch.struct)
        if status != 0:
            raise DecodeError(f"llama_decode returned {status}")
        if outputs == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        pointer = llama_cpp.llama_get_logits(self.ctx)
        view = np.ctypeslib.as_array(pointer, shape=(outputs, self.n_vocab))
        view.flags.writeable = False
        return view

    def keep_prefix(self, slot: int, length: int) -> int:
        """Drop the slot's KV cache past ``length`` tokens; how many it still holds (0 when the
        cache cannot be cut there: a sliding-window layer no longer holds what it needs)."""
        if length > 0:
            low = llama_cpp.llama_memory_seq_pos_min(self.memory, slot)
            if low <= max(0, length - self.swa) and llama_cpp.llama_memory_seq_rm(self.memory, slot, length, -1):
                return length
        llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)
        return 0

    def clear(self) -> None:
        """Empty every slot's KV cache."""
        llama_cpp.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        free(self.ctx, self.model)
        self.ctx = self.model = None
