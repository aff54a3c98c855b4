"""From hidden states to one vector per text, as the model's sentence-transformers files say.

``modules.json`` lists the pipeline (Transformer, Pooling, Normalize); the Pooling module's
``config.json`` says which poolings (several are concatenated, in sentence-transformers'
order); ``sentence_bert_config.json`` caps the input length. A model without ``modules.json``
gets mean pooling and no normalisation, which is what sentence-transformers makes of a plain
Hugging Face encoder. Matryoshka training is read from ``config.json`` (``is_matryoshka``,
``matryoshka_dimensions``: vLLM's keys).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

# sentence-transformers' Pooling: its config keys, in the order it concatenates the results.
POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "last",
}
_MODULES = "sentence_transformers.models."
_SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}


@dataclass(frozen=True)
class SentenceConfig:
    """How one text's hidden states become its vector."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_length: int | None = None  # sentence_bert_config's max_seq_length
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] = ()  # empty: any size up to the full one

    @classmethod
    def read(cls, path: Path) -> SentenceConfig:
        """``ValueError`` for a pipeline this engine cannot reproduce (a Dense layer, weighted
        mean pooling...): better refused at load than vectors that differ from the model's."""
        model_config: dict[str, Any] = _json(path / "config.json") or {}
        dimensions = tuple(model_config.get("matryoshka_dimensions") or ())
        matryoshka = bool(model_config.get("is_matryoshka")) or bool(dimensions)
        max_length = (_json(path / "sentence_bert_config.json") or {}).get("max_seq_length")
        modules = _json(path / "modules.json")
        if modules is None:
            return cls(max_length=max_length, matryoshka=matryoshka, matryoshka_dimensions=dimensions)
        kinds = [m["type"].removeprefix(_MODULES) for m in modules]
        unsupported = [k for k in kinds if k not in _SUPPORTED_MODULES]
        if unsupported:
            raise ValueError(f"sentence-transformers module(s) {', '.join(unsupported)} are not supported")
        pooling_dir = next((m.get("path", "") for m in modules if m["type"].endswith("Pooling")), None)
        modes: tuple[str, ...] = ("mean",)
        if pooling_dir is not None:
            modes = _pooling_modes(_json(path / pooling_dir / "config.json") or {})
        return cls(modes, "Normalize" in kinds, max_length, matryoshka, dimensions)


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _pooling_modes(pooling: dict[str, Any]) -> tuple[str, ...]:
    if pooling.get("pooling_mode_weightedmean_tokens"):
        raise ValueError("weighted mean pooling is not supported")
    if pooling.get("include_prompt") is False:
        raise ValueError("pooling without the prompt (include_prompt false) is not supported")
    modes = tuple(mode for key, mode in POOLING_MODES.items() if pooling.get(key))
    if not modes:
        raise ValueError("the Pooling module names no pooling mode")
    return modes


def pool(hidden: mx.array, attention: mx.array, modes: tuple[str, ...]) -> mx.array:
    """``(batch, length, hidden)`` states to ``(batch, hidden × len(modes))`` vectors, looking
    only at real tokens (``attention`` 1; padding on the right)."""
    weights = attention[:, :, None].astype(hidden.dtype)
    counts = mx.maximum(weights.sum(axis=1), 1.0)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(mx.where(weights > 0, hidden, -1e9).max(axis=1))
        elif mode == "mean":
            parts.append((hidden * weights).sum(axis=1) / counts)
        elif mode == "mean_sqrt_len":
            parts.append((hidden * weights).sum(axis=1) / mx.sqrt(counts))
        elif mode == "last":
            last = attention.astype(mx.int32).sum(axis=1) - 1
            parts.append(mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)


def normalized(vectors: mx.array) -> mx.array:
    """Each row scaled to unit length (a zero row stays zero)."""
    norms = mx.sqrt((vectors * vectors).sum(axis=-1, keepdims=True))
    return vectors / mx.maximum(norms, 1e-12)
