"""Engine plug-ins for tests: the real MLX, embedding and GGUF embedding engines, made slow or
stuck on purpose."""

from __future__ import annotations

import time
from typing import Any

from opta_lmx.proto import FromWorker
from opta_lmx.worker.engines.embedding import EmbeddingEngine
from opta_lmx.worker.engines.gguf_embedding import GgufEmbeddingEngine
from opta_lmx.worker.engines.mlx import MlxEngine

STALL_AFTER = 5
SLOW_STEP_SECONDS = 0.03
SLOW_PREFILL_SECONDS = 0.8
SLOW_LOAD_SECONDS = 3.0


class StallingEngine(MlxEngine):
    """After ``STALL_AFTER`` tokens, ``step`` blocks forever while the heartbeat thread keeps
    reporting: alive, busy, progress frozen — the picture of a hung worker."""

    def step(self) -> list[FromWorker]:
        if self.tokens_generated >= STALL_AFTER:
            while True:
                time.sleep(3600)
        return super().step()


class SlowEngine(MlxEngine):
    """A decode step that takes ``SLOW_STEP_SECONDS``: a request stays busy long enough to be
    seen busy by heartbeats, whatever the machine's speed."""

    def step(self) -> list[FromWorker]:
        time.sleep(SLOW_STEP_SECONDS)
        return super().step()


class SlowLoadEngine(SlowEngine):
    """A load that takes ``SLOW_LOAD_SECONDS``: requests for a cold model wait for it together."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(SLOW_LOAD_SECONDS)
        super().__init__(*args, **kwargs)


class FirstStepEngine(MlxEngine):
    """Calls ``first_step`` before the first step that follows each ``submit``."""

    def submit(self, request):  # type: ignore[no-untyped-def]
        self._first_pending = True
        return super().submit(request)

    def step(self) -> list[FromWorker]:
        if getattr(self, "_first_pending", False):
            self._first_pending = False
            self.first_step()
        return super().step()

    def first_step(self) -> None:
        raise NotImplementedError


class SlowPrefillEngine(FirstStepEngine, SlowEngine):
    """Like ``SlowEngine``, and each request's first step takes ``SLOW_PREFILL_SECONDS`` more,
    like a long prompt: the worker is busy while its progress counter has not moved yet."""

    def first_step(self) -> None:
        time.sleep(SLOW_PREFILL_SECONDS)


SLOW_CHUNK_SECONDS = 0.15


class SlowChunkPrefillEngine(MlxEngine):
    """Each forward pass over more than one token (a prompt chunk) takes ``SLOW_CHUNK_SECONDS``
    more: with a small ``prefill_step_size`` a prompt's prefill lasts longer than a short
    ``hang_timeout`` while still moving chunk by chunk, as a long prompt on a large model does."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        model_class = type(self._model)

        def slow_call(model, inputs, *rest, **named):  # type: ignore[no-untyped-def]
            if inputs.shape[-1] > 1:
                time.sleep(SLOW_CHUNK_SECONDS)
            return model_class.__call__(model, inputs, *rest, **named)

        # The generators already hold this model object: change what calling it does.
        self._model.__class__ = type("SlowChunks", (model_class,), {"__call__": slow_call})


SPIN_SECONDS = 2.5


class SpinningStepEngine(FirstStepEngine):
    """Each request's first step computes for ``SPIN_SECONDS`` (the CPU busy, no token and no
    prompt chunk finished), as one big prompt chunk does on a CPU backend."""

    def first_step(self) -> None:
        deadline = time.perf_counter() + SPIN_SECONDS
        while time.perf_counter() < deadline:
            pass


SLOW_EMBED_STEP_SECONDS = 0.5


class SlowEmbeddingEngine(EmbeddingEngine):
    """An embedding forward pass that takes ``SLOW_EMBED_STEP_SECONDS`` more: a request is still
    in flight when a test acts on its worker, whatever the machine's speed."""

    def step(self) -> list[FromWorker]:
        if self.active:
            time.sleep(SLOW_EMBED_STEP_SECONDS)
        return super().step()


class SlowGgufEmbeddingEngine(GgufEmbeddingEngine):
    """The GGUF embedding engine with ``SLOW_EMBED_STEP_SECONDS`` more a pass."""

    def step(self) -> list[FromWorker]:
        if self.active:
            time.sleep(SLOW_EMBED_STEP_SECONDS)
        return super().step()
