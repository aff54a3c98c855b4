"""A BERT encoder in MLX: the network under sentence-transformers embedding models
(``BertModel``) and BERT cross-encoders (``BertForSequenceClassification``, one label).

Reads the Hugging Face layout as it is: ``config.json`` and ``model.safetensors`` (a
``bert.`` prefix, TensorFlow-era ``gamma``/``beta`` names and the ``position_ids`` buffer are
taken care of). Weights are cast to float32: MLX's CPU backend computes half precision about
30 times slower, and these models are small.

Padding: ``__call__`` takes a key mask, so a padded position is never attended to; a text's
hidden states are the same alone or padded in a batch, within float rounding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn

ARCHITECTURES = ("BertModel", "BertForSequenceClassification")
_ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "gelu": nn.gelu,
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
}


@dataclass(frozen=True)
class BertConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    num_labels: int

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        """The model's ``config.json``; ``ValueError`` for what this encoder cannot run."""
        raw: dict[str, Any] = json.loads((path / "config.json").read_text())
        architecture = (raw.get("architectures") or ["BertModel"])[0]
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture {architecture!r} is not supported by the embedding engine "
                f"(it runs {', '.join(ARCHITECTURES)})"
            )
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {raw['position_embedding_type']!r} is not supported")
        if raw.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {raw['hidden_act']!r} is not supported")
        labels = len(raw.get("id2label") or {}) or int(raw.get("num_labels", 1))
        if architecture == "BertForSequenceClassification" and labels != 1:
            raise ValueError(f"a cross-encoder must have one label (a relevance score), this one has {labels}")
        return cls(
            architecture=architecture,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            intermediate_size=raw["intermediate_size"],
            max_position_embeddings=raw["max_position_embeddings"],
            type_vocab_size=raw.get("type_vocab_size", 2),
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            hidden_act=raw.get("hidden_act", "gelu"),
            num_labels=labels,
        )

    @property
    def cross_encoder(self) -> bool:
        return self.architecture == "BertForSequenceClassification"


class _Layer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.layer_norm_eps
        self.heads = config.num_attention_heads
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.value = nn.Linear(size, size)
        self.attn_out = nn.Linear(size, size)
        self.attn_norm = nn.LayerNorm(size, eps=eps)
        self.up = nn.Linear(size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, size)
        self.ffn_norm = nn.LayerNorm(size, eps=eps)
        self.act = _ACTIVATIONS[config.hidden_act]

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, size = x.shape

        def heads(t: mx.array) -> mx.array:
            return t.reshape(batch, length, self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scale = (size // self.heads) ** -0.5
        attended = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        attended = attended.transpose(0, 2, 1, 3).reshape(batch, length, size)
        x = self.attn_norm(x + self.attn_out(attended))  # post-norm, as BERT does
        return self.ffn_norm(x + self.down(self.act(self.up(x))))


class Bert(nn.Module):
    """The encoder; with ``config.cross_encoder``, also the pooler and the one-label classifier."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        size = config.hidden_size
        self.config = config
        self.word = nn.Embedding(config.vocab_size, size)
        self.position = nn.Embedding(config.max_position_embeddings, size)
        self.token_type = nn.Embedding(config.type_vocab_size, size)
        self.embed_norm = nn.LayerNorm(size, eps=config.layer_norm_eps)
        self.layers = [_Layer(config) for _ in range(config.num_hidden_layers)]
        if config.cross_encoder:
            self.pooler = nn.Linear(size, size)
            self.classifier = nn.Linear(size, 1)

    def __call__(self, ids: mx.array, type_ids: mx.array, attention: mx.array) -> mx.array:
        """Hidden states ``(batch, length, hidden)``; ``attention`` is 1 for real tokens, 0 for
        padding (a padded row's own states are computed and ignored by pooling)."""
        positions = mx.arange(ids.shape[1])[None, :]
        x = self.embed_norm(self.word(ids) + self.position(positions) + self.token_type(type_ids))
        mask = (attention[:, None, None, :] > 0)  # keys only: who may be attended to
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def relevance(self, hidden: mx.array) -> mx.array:
        """A cross-encoder's logit per row (from its first token, [CLS]), ``(batch,)``."""
        return self.classifier(mx.tanh(self.pooler(hidden[:, 0])))[:, 0]


_RENAMES = [
    (re.compile(r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\."), r"layers.\1.\2."),
    (re.compile(r"^encoder\.layer\.(\d+)\.attention\.output\.dense\."), r"layers.\1.attn_out."),
    (re.compile(r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\."), r"layers.\1.attn_norm."),
    (re.compile(r"^encoder\.layer\.(\d+)\.intermediate\.dense\."), r"layers.\1.up."),
    (re.compile(r"^encoder\.layer\.(\d+)\.output\.dense\."), r"layers.\1.down."),
    (re.compile(r"^encoder\.layer\.(\d+)\.output\.LayerNorm\."), r"layers.\1.ffn_norm."),
    (re.compile(r"^embeddings\.word_embeddings\."), "word."),
    (re.compile(r"^embeddings\.position_embeddings\."), "position."),
    (re.compile(r"^embeddings\.token_type_embeddings\."), "token_type."),
    (re.compile(r"^embeddings\.LayerNorm\."), "embed_norm."),
    (re.compile(r"^pooler\.dense\."), "pooler."),
]


def _rename(name: str) -> str:
    name = name.removeprefix("bert.")
    name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
    for pattern, replacement in _RENAMES:
        name, count = pattern.subn(replacement, name)
        if count:
            break
    return name


def load_bert(path: Path) -> Bert:
    """The model at ``path`` with its weights, evaluated; ``ValueError`` naming what is missing
    or left over when the weights do not fit the config."""
    config = BertConfig.read(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in {path}")
    weights: dict[str, mx.array] = {}
    for file in files:
        weights.update({_rename(k): v for k, v in mx.load(str(file)).items()})
    weights = {k: v.astype(mx.float32) for k, v in weights.items() if not k.endswith("position_ids")}
    if not config.cross_encoder:
        weights = {k: v for k, v in weights.items() if not k.startswith("pooler.")}  # unused by pooling
    model = Bert(config)
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model
