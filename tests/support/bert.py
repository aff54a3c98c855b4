"""Random-weight BERT models in the Hugging Face layout, for the embedding engine's mechanics:
a cross-encoder (no real one ships as a package) and embedding models with the pooling,
normalisation and Matryoshka settings a test wants. The tokenizer is a real one, copied from
another model (all-MiniLM-L6-v2's WordPiece)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx

HIDDEN, LAYERS, HEADS, INTERMEDIATE = 32, 2, 4, 64


def build_bert(
    path: Path,
    tokenizer_from: Path,
    *,
    cross_encoder: bool = False,
    pooling: dict[str, Any] | None = None,
    normalize: bool = True,
    config: dict[str, Any] | None = None,
    max_seq_length: int | None = None,
    seed: int = 0,
) -> Path:
    """A BERT at ``path``: ``BertForSequenceClassification`` with one label if ``cross_encoder``,
    else a ``BertModel`` with sentence-transformers files (``pooling``: the Pooling config's
    keys, mean by default; ``normalize``: a Normalize module). ``config`` adds keys to
    config.json."""
    path.mkdir(parents=True)
    shutil.copy(tokenizer_from / "tokenizer.json", path / "tokenizer.json")
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    architecture = "BertForSequenceClassification" if cross_encoder else "BertModel"
    model_config = {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        **({"id2label": {"0": "LABEL_0"}} if cross_encoder else {}),
        **(config or {}),
    }
    (path / "config.json").write_text(json.dumps(model_config))
    mx.save_safetensors(str(path / "model.safetensors"), _weights(len(vocab), cross_encoder, seed))
    if not cross_encoder:
        _sentence_files(path, pooling or {"pooling_mode_mean_tokens": True}, normalize, max_seq_length)
    return path


def _weights(vocab: int, cross_encoder: bool, seed: int) -> dict[str, mx.array]:
    key = mx.random.key(seed)
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (vocab, HIDDEN),
        "embeddings.position_embeddings.weight": (64, HIDDEN),
        "embeddings.token_type_embeddings.weight": (2, HIDDEN),
        "pooler.dense.weight": (HIDDEN, HIDDEN),
        "pooler.dense.bias": (HIDDEN,),
    }
    for i in range(LAYERS):
        prefix = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[f"{prefix}{name}.weight"] = (HIDDEN, HIDDEN)
            shapes[f"{prefix}{name}.bias"] = (HIDDEN,)
        shapes[f"{prefix}intermediate.dense.weight"] = (INTERMEDIATE, HIDDEN)
        shapes[f"{prefix}intermediate.dense.bias"] = (INTERMEDIATE,)
        shapes[f"{prefix}output.dense.weight"] = (HIDDEN, INTERMEDIATE)
        shapes[f"{prefix}output.dense.bias"] = (HIDDEN,)
    weights: dict[str, mx.array] = {}
    for name, shape in shapes.items():
        key, sub = mx.random.split(key)
        weights[name] = 0.2 * mx.random.normal(shape, key=sub)
    norms = ["embeddings.LayerNorm"] + [f"encoder.layer.{i}.{n}.LayerNorm" for i in range(LAYERS) for n in ("attention.output", "output")]
    for norm in norms:
        weights[f"{norm}.weight"] = mx.ones((HIDDEN,))
        weights[f"{norm}.bias"] = mx.zeros((HIDDEN,))
    if cross_encoder:
        weights = {f"bert.{k}": v for k, v in weights.items()}  # as BertForSequenceClassification saves them
        key, sub = mx.random.split(key)
        weights["classifier.weight"] = mx.random.normal((1, HIDDEN), key=sub)
        weights["classifier.bias"] = mx.zeros((1,))
    return weights


def _sentence_files(path: Path, pooling: dict[str, Any], normalize: bool, max_seq_length: int | None) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": HIDDEN, **pooling}))
    if max_seq_length is not None:
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
