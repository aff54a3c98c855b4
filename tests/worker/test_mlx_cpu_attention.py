"""numpy attention against MLX's own (``mx.fast.scaled_dot_product_attention``'s CPU fallback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

from opta_lmx.config import EngineOptions
from opta_lmx.worker.engines import mlx_cpu_attention
from opta_lmx.worker.engines.mlx import MlxEngine

mlx_attention = mlx_cpu_attention._mlx_attention


@pytest.fixture(autouse=True)
def on_the_cpu() -> Iterator[None]:
    """MLX on its CPU (where the numpy path applies, whatever the machine), and MLX's own
    attention back after each test."""
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mlx_cpu_attention.install("mlx")
    mx.set_default_device(device)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few query rows, so every case crosses block edges."""
    monkeypatch.setattr(mlx_cpu_attention, "_BLOCK", 3 * 4096)


def inputs(batch: int, heads: int, kv_heads: int, length: int, seen: int, dim: int) -> tuple[mx.array, ...]:
    mx.random.seed(length * seen + heads)
    return (
        mx.random.normal((batch, heads, length, dim)),
        mx.random.normal((batch, kv_heads, seen, dim)),
        mx.random.normal((batch, kv_heads, seen, dim)),
    )


def assert_same(queries: mx.array, keys: mx.array, values: mx.array, mask: mx.array | str | None) -> None:
    ours = mlx_cpu_attention.attention(queries, keys, values, scale=0.3, mask=mask)
    theirs = mlx_attention(queries, keys, values, scale=0.3, mask=mask)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert mx.allclose(ours.astype(mx.float32), theirs.astype(mx.float32), atol=1e-5).item()


SHAPES = [(1, 4, 2, 300, 1300), (2, 6, 2, 64, 400), (1, 9, 3, 200, 200), (3, 4, 4, 130, 130)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", [None, "causal"])
def test_no_mask_and_causal_match_mlx(shape: tuple[int, ...], mask: str | None, small_blocks: None) -> None:
    assert_same(*inputs(*shape, 16), mask)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["bool per batch", "bool per head", "added, 2-D", "padding, per key"])
def test_mask_arrays_match_mlx(shape: tuple[int, ...], kind: str, small_blocks: None) -> None:
    batch, heads, _, length, seen = shape
    if kind == "bool per batch":
        mask = mx.random.uniform(shape=(batch, 1, length, seen)) > 0.3
    elif kind == "bool per head":
        mask = mx.random.uniform(shape=(batch, heads, length, seen)) > 0.3
    elif kind == "added, 2-D":
        mask = mx.random.normal((length, seen))
    else:  # as an encoder pads a batch: one row per text, for every query
        mask = mx.where(mx.random.uniform(shape=(batch, 1, 1, seen)) > 0.2, 0.0, -1e9)
    assert_same(*inputs(*shape, 32), mask)


def test_a_row_with_every_key_masked_averages_the_values_as_mlx_does() -> None:
    queries, keys, values = inputs(1, 2, 2, 160, 160, 8)
    mask = mx.tril(mx.ones((160, 160), dtype=mx.bool_), k=-1)  # row 0 sees nothing
    assert_same(queries, keys, values, mask)
    out = mlx_cpu_attention.attention(queries, keys, values, scale=0.3, mask=mask)
    assert mx.allclose(out[0, :, 0], values[0].mean(axis=1), atol=1e-5).item()


def test_half_precision_and_sliced_keys_as_a_kv_cache_holds_them() -> None:
    queries, keys, values = (a.astype(mx.bfloat16) for a in inputs(1, 4, 2, 200, 3000, 16))
    ours = mlx_cpu_attention.attention(queries, keys[:, :, :1500], values[:, :, :1500], scale=0.25, mask="causal")
    theirs = mlx_attention(queries, keys[:, :, :1500], values[:, :, :1500], scale=0.25, mask="causal")
    assert ours.dtype == mx.bfloat16
    assert mx.allclose(ours.astype(mx.float32), theirs.astype(mx.float32), atol=2e-2).item()


def test_decode_steps_and_sinks_are_left_to_mlx(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counted(*args: object, **kwargs: object) -> mx.array:
        calls.append(kwargs.get("sinks") is not None)
        return mlx_attention(*args, **kwargs)

    monkeypatch.setattr(mlx_cpu_attention, "_mlx_attention", counted)
    for length in (1, 4):  # a decode step; a speculative step's check of three drafted tokens
        queries, keys, values = inputs(2, 4, 2, length, 20000, 16)
        mlx_cpu_attention.attention(queries, keys, values, scale=0.3, mask=None)
    queries, keys, values = inputs(1, 4, 2, 200, 200, 16)
    mlx_cpu_attention.attention(queries, keys, values, scale=0.3, mask="causal", sinks=mx.zeros((4,)))
    mlx_cpu_attention.attention(queries, keys, values, scale=0.3, mask="causal")
    assert calls == [False, False, True]
    with pytest.raises(ValueError):  # a mask string MLX does not know is MLX's to refuse
        mlx_cpu_attention.attention(queries, keys, values, scale=0.3, mask="sideways")


def test_under_compile_it_leaves_the_work_to_mlx() -> None:
    queries, keys, values = inputs(1, 4, 2, 200, 200, 16)
    compiled = mx.compile(lambda q, k, v: mlx_cpu_attention.attention(q, k, v, scale=0.3, mask="causal"))
    theirs = mlx_attention(queries, keys, values, scale=0.3, mask="causal")
    assert mx.allclose(compiled(queries, keys, values), theirs, atol=1e-5).item()


def test_install_replaces_mlx_attention_on_the_cpu_only_when_asked() -> None:
    assert mx.default_device() == mx.cpu
    assert mlx_cpu_attention.install("numpy") is True
    assert mx.fast.scaled_dot_product_attention is mlx_cpu_attention.attention
    assert mlx_cpu_attention.install("mlx") is False
    assert mx.fast.scaled_dot_product_attention is mlx_attention


def test_the_engine_computes_a_long_prompt_with_it_and_the_model_agrees(tiny_model: Path) -> None:
    """A model's logits over a prompt long enough for the numpy path agree with MLX's own."""
    MlxEngine("tiny", str(tiny_model), EngineOptions(cpu_attention="numpy"))
    assert mx.fast.scaled_dot_product_attention is mlx_cpu_attention.attention
    model = load(str(tiny_model))[0]
    prompt = mx.array([[(7 * i) % 500 + 3 for i in range(600)]])
    ours = model(prompt, cache=make_prompt_cache(model))
    mlx_cpu_attention.install("mlx")
    theirs = model(prompt, cache=make_prompt_cache(model))
    assert mx.allclose(ours, theirs, atol=1e-4).item()
    MlxEngine("tiny", str(tiny_model), EngineOptions(cpu_attention="mlx"))
    assert mx.fast.scaled_dot_product_attention is mlx_attention


def test_a_batch_prefilled_with_left_padding_in_two_chunks_agrees(tiny_model: Path) -> None:
    """mlx-lm's batch cache: each row padded on the left, its mask an array; the second chunk
    sees the first through the cache. The rows' real positions agree with MLX's own."""
    model = load(str(tiny_model))[0]
    lengths = [300, 180]
    padding = [300 - n for n in lengths]
    tokens = mx.array([[0] * pad + [(7 * i + row) % 400 + 3 for i in range(n)] for row, (pad, n) in enumerate(zip(padding, lengths))])

    def logits(mode: str) -> mx.array:
        mlx_cpu_attention.install(mode)
        caches = [BatchKVCache(padding) for _ in model.layers]
        return mx.concatenate([model(tokens[:, :200], cache=caches), model(tokens[:, 200:], cache=caches)], axis=1)

    ours, theirs = logits("numpy"), logits("mlx")
    for row, pad in enumerate(padding):
        assert mx.allclose(ours[row, pad:], theirs[row, pad:], atol=1e-4).item()
