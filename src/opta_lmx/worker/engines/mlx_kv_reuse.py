"""Where a new prompt's KV cache comes from: the memory tier, the disk tier, or another request
that is prefilling the same beginning right now.

``plan`` decides, for a prompt, whether to start at once from what memory holds, or to wait
(the request is ``Started`` and parked in the engine meanwhile) for something better that is on
its way:

- another request still prefilling a prompt that shares a long beginning with this one (four
  agent sessions sending the same system prompt and tools at the same moment): its cache is
  copied into the memory tier as soon as its prompt is done (``keep_snapshot``), and the waiting
  prompts start from it, so the shared part is prefilled once, not once per session;
- a file of the disk tier holding more of the prompt than memory does: read and checked on the
  reader thread while the model thread goes on decoding the others.

Waiting is chosen only for a gain of at least ``MIN_SHARED`` tokens, and for another request's
prefill only when the shared part is at least half of what that request still has to compute (a
short shared beginning is not worth waiting for a long prompt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from mlx_lm.models.cache import trim_prompt_cache

from opta_lmx.worker.engines.mlx_kv_disk import DiskTier
from opta_lmx.worker.engines.mlx_prompt_cache import PromptCache, snapshot
from opta_lmx.worker.kv_disk import DiskRead, shared_prefix

LayerCaches = list[Any]
# Fewer shared tokens than this are not worth a wait, a disk read or a snapshot.
MIN_SHARED = 32
# A disk read that takes longer than this is given up (a stuck disk must not hold a request
# forever): the request starts from what memory holds.
READ_PATIENCE = 30.0


@dataclass
class Waiting:
    """What a parked request waits for: ``leader``'s first token (its prompt done and kept), or a
    disk ``read``. ``expected``: the prompt tokens it should then find cached."""

    expected: int
    leader: int | None = None
    read: DiskRead | None = None
    since: float = field(default_factory=time.monotonic)


@dataclass
class Prefilling:
    """A request whose prompt is still being computed."""

    request_id: int
    prompt: list[int]
    computing: int  # prompt tokens it computes (not taken from a cache)


class KVReuse:
    """The memory tier (``PromptCache``) and, when configured, the disk tier behind it."""

    def __init__(self, memory: PromptCache, disk: DiskTier | None, model_caches: Callable[[], LayerCaches]) -> None:
        self.memory = memory
        self.disk = disk if memory.enabled else None
        self._model_caches = model_caches  # a fresh cache of the model: what a file must match
        self._closing = False
        if self.disk is not None:
            memory.set_spill(self._spill)

    def plan(self, prompt: list[int], prefilling: Iterable[Prefilling]) -> Waiting | None:
        """None: start now from ``start(prompt)``; else what to wait for first."""
        if not self.memory.enabled:
            return None
        now = self.memory.usable(prompt)
        entry, on_disk = self.disk.lookup(prompt) if self.disk is not None else (None, 0)
        have = max(now, on_disk)
        wanted = np.asarray(prompt, dtype=np.uint32)
        for other in prefilling:
            shared = min(shared_prefix(np.asarray(other.prompt, dtype=np.uint32), wanted), len(prompt) - 1)
            if shared - have >= MIN_SHARED and 2 * (shared - have) >= other.computing:
                return Waiting(expected=shared, leader=other.request_id)
        if entry is not None and on_disk - now >= MIN_SHARED:
            assert self.disk is not None
            return Waiting(expected=on_disk, read=self.disk.read(entry, on_disk))
        return None

    @staticmethod
    def ready(waiting: Waiting, prefilling: set[int]) -> bool:
        if waiting.read is not None:
            return waiting.read.ready.is_set() or time.monotonic() - waiting.since > READ_PATIENCE
        return waiting.leader not in prefilling

    def start(self, prompt: list[int], waiting: Waiting | None = None) -> tuple[LayerCaches | None, int]:
        """The cache to start ``prompt`` from (a private copy) and the tokens it holds."""
        if waiting is not None and waiting.read is not None and self.disk is not None:
            read = self.disk.finish_read(waiting.read, self._model_caches())
            if read is not None:
                tokens = waiting.read.entry.tokens.tolist()
                self.memory.store(tokens, read)
                if self.memory.usable(prompt) < waiting.read.usable:  # too large for memory: use it as it is
                    trim_prompt_cache(read, len(tokens) - waiting.read.usable)
                    return read, waiting.read.usable
        return self.memory.fetch(prompt)

    def wait_for_disk(self, waiting: list[Waiting], timeout: float) -> None:
        """Block up to ``timeout`` for one of these reads (only when nothing else can run)."""
        reads = [w.read for w in waiting if w.read is not None]
        if reads:
            reads[0].ready.wait(timeout)

    def store(self, tokens: list[int], cache: LayerCaches | None) -> None:
        self.memory.store(tokens, cache)

    def keep_snapshot(self, tokens: list[int], cache: LayerCaches, computed: int) -> None:
        """Copy a running request's cache into the memory tier once its prompt is done, so that
        others can start from it before it finishes (if its prompt was worth it)."""
        if self.memory.enabled and computed >= MIN_SHARED:
            copied = snapshot(cache)
            if copied is not None:
                self.memory.store(list(tokens), copied)

    def collect(self) -> None:
        """Release what the disk writer is done with (on the model thread)."""
        if self.disk is not None:
            self.disk.release()

    def trim(self) -> None:
        """Memory is wanted: empty the memory tier (into the disk tier, as far as it keeps up)."""
        self.memory.clear(spill=True)

    def drop(self) -> None:
        """Forget the memory tier without writing it (after an engine fault)."""
        self.memory.clear()

    def close(self) -> None:
        """At exit: write the memory tier to disk, most recently used first, and wait for it."""
        if self.disk is None:
            return
        self._closing = True
        self.memory.clear(spill=True)
        self.disk.close()

    def _spill(self, tokens: list[int], cache: LayerCaches) -> None:
        assert self.disk is not None
        self.disk.spill(tokens, cache, force=self._closing)
