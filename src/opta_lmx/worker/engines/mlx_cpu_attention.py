"""Attention for MLX on its CPU device, computed with numpy (``[models.options] cpu_attention``).

On the CPU, MLX has no attention kernel: ``mx.fast.scaled_dot_product_attention`` falls back to a
product, a masked softmax and a product, and the wheel's element-wise code on x86 is scalar: its
``exp`` costs about 16 ns an element here, numpy's (SIMD) under 1 ns. Over a long history the
softmax is most of a prompt's prefill: 1,000 new tokens after 12,000 cached ones took 1.76 s on the
tiny demo model, 0.27 s with this; a 135M model at that context spends about 90 % of a prefilled
token's time in it (``bench/blas.py --compare attention`` measures both, and whether greedy
tokens change).

``install`` puts ``attention`` in place of ``mx.fast.scaled_dot_product_attention`` in the worker's
process, where every mlx-lm model finds it (they look the name up on each call). It computes
``softmax(scale * q @ kᵀ + mask) @ v`` in float32 in blocks of query rows, so no more than
``_BLOCK`` scores exist at once (MLX's fallback makes all of them: 2 GB for a 2,048-token chunk
over 30,000 keys on 9 heads). What it does not cover goes to MLX's own: attention sinks, code
under ``mx.compile``, and decode steps (one query a sequence, or a few in a speculative step's
check), where numpy gained nothing in the same measurements and would make MLX wait for each
layer's inputs instead of building the next step's graph meanwhile. A quantized KV cache
(``kv_bits``) never comes here: mlx-lm computes its attention itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

# Scores computed at once: 16 MiB of float32, which stays in the CPU's caches between the steps.
_BLOCK = 1 << 22
# Below this many scores per head MLX's own path is as quick (the copies to numpy cost more).
_SMALL = 1 << 14
# At most this many queries a sequence is a decode step (a speculative one checks a few tokens).
_DECODE = 8
# What MLX writes for a masked score: the float32 minimum, not -inf, so a row with every key
# masked (a padded position of a batch) averages the values instead of making NaNs.
_MASKED = np.finfo(np.float32).min

_mlx_attention: Callable[..., mx.array] = mx.fast.scaled_dot_product_attention


def install(mode: str) -> bool:
    """Compute attention with numpy in this process if ``mode`` is "numpy" and MLX computes on
    its CPU; says whether it does. "mlx" leaves MLX's own in place."""
    use = mode == "numpy" and mx.default_device() == mx.cpu
    mx.fast.scaled_dot_product_attention = attention if use else _mlx_attention
    return use


def attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    *,
    scale: float,
    mask: mx.array | str | None = None,
    sinks: mx.array | None = None,
    **rest: Any,
) -> mx.array:
    """``mx.fast.scaled_dot_product_attention``'s contract: queries (B, H, L, D), keys and values
    (B, H_kv, S, D) with H a multiple of H_kv, mask None, "causal" (query i sees keys up to
    S - L + i) or an array broadcastable to (B, H, L, S), boolean (True: seen) or added."""
    batch, heads, length, dim = queries.shape
    kv_heads, seen = keys.shape[1], keys.shape[2]
    causal = isinstance(mask, str) and mask == "causal"
    other_mask = isinstance(mask, str) and not causal  # MLX's to refuse
    if sinks is not None or rest or other_mask or length <= _DECODE or length * seen < _SMALL:
        return _mlx_attention(queries, keys, values, scale=scale, mask=mask, sinks=sinks, **rest)
    group = heads // kv_heads
    try:
        q = _numpy(queries).reshape(batch, kv_heads, group, length, dim) * np.float32(scale)
        k_t = _numpy(keys)[:, :, None].swapaxes(-1, -2)
        v = _numpy(values)[:, :, None]
        masks = None if mask is None or isinstance(mask, str) else _grouped(_numpy_mask(mask), heads, group)
    except ValueError:  # inside mx.compile or vmap, where nothing may be evaluated
        return _mlx_attention(queries, keys, values, scale=scale, mask=mask)
    out = np.empty((batch, kv_heads, group, length, values.shape[-1]), np.float32)
    rows = max(1, _BLOCK // (batch * heads * seen))
    for start in range(0, length, rows):
        end = min(length, start + rows)
        scores = np.matmul(q[:, :, :, start:end], k_t)
        if causal:
            _mask_future(scores, start, length, seen)
        elif masks is not None:
            _apply(scores, masks if masks.shape[-2] == 1 else masks[..., start:end, :])
        _softmax(scores)
        np.matmul(scores, v, out=out[:, :, :, start:end])
    return mx.array(out.reshape(batch, heads, length, -1)).astype(queries.dtype)


def _numpy(array: mx.array) -> np.ndarray:
    return np.asarray(array if array.dtype == mx.float32 else array.astype(mx.float32))


def _numpy_mask(mask: mx.array) -> np.ndarray:
    array = np.asarray(mask if mask.dtype in (mx.bool_, mx.float32) else mask.astype(mx.float32))
    return array.reshape((1,) * (4 - array.ndim) + array.shape)


def _grouped(mask: np.ndarray, heads: int, group: int) -> np.ndarray:
    """A (B, H or 1, L, S) mask shaped like the grouped scores, (B, H_kv, group, L, S)."""
    if mask.shape[1] == heads:
        return mask.reshape(mask.shape[0], heads // group, group, *mask.shape[2:])
    return mask[:, :, None]


def _mask_future(scores: np.ndarray, start: int, length: int, seen: int) -> None:
    """Query row r of the block (``start + r`` of ``length``) sees keys up to ``seen - length +
    start + r``: only the last ``length - start`` keys can be in its future."""
    rows = scores.shape[-2]
    future = np.arange(length - start)[None, :] > np.arange(rows)[:, None]
    scores[..., seen - length + start :][..., future] = _MASKED


def _apply(scores: np.ndarray, mask: np.ndarray) -> None:
    if mask.dtype == np.bool_:
        np.copyto(scores, _MASKED, where=~mask)
    else:
        scores += mask


def _softmax(scores: np.ndarray) -> None:
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
