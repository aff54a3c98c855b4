"""The MLX side of the disk tier (``worker/kv_disk``): KV caches as bytes, and back.

Export runs on the model thread: it evaluates the cache's arrays and takes host views of their
memory (no copy), split into C-contiguous blocks; the writer thread only reads those blocks, and
hands them back to be released here. A ``KVCache`` is cut to the tokens it holds (the generator
allocates in steps of 256). Restoring builds MLX arrays from the bytes read (one copy) and the
cache objects with mlx-lm's ``from_state``; it refuses a layout that does not match the model's
own caches, so a file can never feed a wrong shape into the model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx_lm
import numpy as np
from mlx_lm.models import cache as cache_module
from mlx_lm.models.cache import KVCache, can_trim_prompt_cache

from opta_lmx.config import EngineOptions
from opta_lmx.worker.kv_disk import DiskEntry, DiskRead, KVDiskStore, weights_identity

LayerCaches = list[Any]
_SCALARS = (int, float, bool, type(None))


def export(cache: LayerCaches) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    """The layout and host buffers of ``cache``; None if a layer's state is not plain arrays and
    numbers (such a cache stays out of the disk tier)."""
    layers, arrays = [], []
    for layer in cache:
        state = list(layer.state)
        if type(layer) is KVCache:
            if layer.keys is None:
                return None
            end = layer.offset
            state = [layer.keys[..., :end, :], layer.values[..., :end, :], end]
        items = []
        for value in state:
            if isinstance(value, mx.array):
                items.append({"array": len(arrays), "dtype": _dtype_name(value.dtype), "shape": list(value.shape)})
                arrays.append(value)
            elif isinstance(value, _SCALARS):
                items.append({"value": value})
            else:
                return None
        layers.append({"class": type(layer).__name__, "state": items})
    mx.eval(arrays)
    buffers = [block for a in arrays for block in _blocks(_host_view(a))]
    return {"layers": layers}, buffers


def restore(layout: dict[str, Any], payload: memoryview, expected: LayerCaches) -> LayerCaches:
    """The caches ``layout`` describes, from ``payload``; ``expected`` is what the model makes
    (its classes must match). Raises ``ValueError`` on any mismatch."""
    layers = layout["layers"]
    if [layer["class"] for layer in layers] != [type(c).__name__ for c in expected]:
        raise ValueError("the cache's layers do not match the model's")
    offset = 0
    restored = []
    for layer in layers:
        state = []
        for item in layer["state"]:
            if "value" in item:
                state.append(item["value"])
                continue
            array, offset = _array(payload, offset, item["dtype"], item["shape"])
            state.append(array)
        restored.append(getattr(cache_module, layer["class"]).from_state(tuple(state)))
    if offset != len(payload):
        raise ValueError("the payload's size does not match its layout")
    mx.eval([c.state for c in restored])
    return restored


def _array(payload: memoryview, offset: int, dtype: str, shape: list[int]) -> tuple[mx.array, int]:
    target = getattr(mx, dtype)
    host = np.dtype(np.uint16) if target == mx.bfloat16 else np.dtype(dtype)
    count = int(np.prod(shape))
    data = np.frombuffer(payload, dtype=host, count=count, offset=offset).reshape(shape)
    array = mx.array(data)
    return (array.view(target) if target == mx.bfloat16 else array), offset + count * host.itemsize


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def _host_view(array: mx.array) -> np.ndarray:
    """The array's memory as numpy sees it, without a copy (numpy has no bfloat16: as uint16)."""
    if array.dtype == mx.bfloat16:
        array = array.view(mx.uint16)
        mx.eval(array)
    return np.asarray(array)


def _blocks(view: np.ndarray) -> list[np.ndarray]:
    """``view`` as C-contiguous pieces in row-major order (a slice along the token axis is one
    piece per head), copied only if even its last two axes are not contiguous."""
    if view.flags.c_contiguous:
        return [view]
    if view.ndim <= 2:
        return [np.ascontiguousarray(view)]
    return [block for sub in view for block in _blocks(sub)]


class DiskTier:
    """The engine's disk tier: spills caches to files, finds and reads them back.

    ``spill`` is the memory tier's eviction hook; ``close`` writes what is still in memory (the
    caller spills it first) and waits for the writer.
    """

    def __init__(self, store: KVDiskStore) -> None:
        self.store = store

    @classmethod
    def open(cls, model_name: str, model_path: str, options: EngineOptions) -> DiskTier | None:
        """The tier for this model per ``options``, in ``<kv_disk_dir>/<model name>`` (None when
        disabled or unusable: said once)."""
        if not options.kv_disk_bytes or not options.kv_disk_dir or options.sequential:
            return None
        identity = weights_identity(
            Path(model_path),
            {
                "engine": "mlx",
                "mlx": mx.__version__,
                "mlx_lm": mlx_lm.__version__,
                "max_kv_size": options.max_kv_size,
            },
        )
        directory = Path(options.kv_disk_dir) / model_name.replace("/", "_")
        try:
            store = KVDiskStore(directory, identity, options.kv_disk_bytes, max_pending=options.prompt_cache_bytes)
        except OSError as exc:
            print(f"kv disk tier off: cannot use {directory}: {exc}", file=sys.stderr, flush=True)
            return None
        return cls(store)

    def spill(self, tokens: list[int], cache: LayerCaches, force: bool = False) -> bool:
        """Queue ``cache`` (holding ``tokens``) for writing; False if it will not be written."""
        trimmable = can_trim_prompt_cache(cache)
        if self.store.covers(tokens, trimmable):
            return False
        exported = export(cache)
        if exported is None:
            return False
        layout, buffers = exported
        return self.store.write(tokens, layout, buffers, trimmable, force=force)

    def lookup(self, prompt: list[int]) -> tuple[DiskEntry | None, int]:
        return self.store.lookup(prompt)

    def read(self, entry: DiskEntry, usable: int) -> DiskRead:
        return self.store.read(entry, usable)

    def finish_read(self, ticket: DiskRead, expected: LayerCaches) -> LayerCaches | None:
        """The cache a finished read holds, or None (missing, corrupt: the file is gone; or not
        read yet: given up)."""
        if not ticket.ready.is_set() or ticket.result is None:
            return None
        layout, payload = ticket.result
        ticket.result = None
        try:
            return restore(layout, payload, expected)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"kv disk tier: {ticket.entry.name} does not fit the model ({exc}): removed", file=sys.stderr, flush=True)
            self.store.discard(ticket.entry)
            return None

    def release(self) -> None:
        self.store.release()

    def close(self) -> None:
        self.store.close()
