"""A sentence-transformers BERT (all-MiniLM-L6-v2's layout) written as a GGUF file the way llama.cpp's
``convert_hf_to_gguf.py`` writes a ``BertModel``: architecture ``bert``, the encoder's numbers and
``bert.attention.causal = false``, the pooling type from the model's ``1_Pooling`` module, a WordPiece
vocabulary in llama.cpp's "phantom space" form (``##`` continuation pieces bare, word starts with a
leading U+2581, control tokens as they are), and the tensors under the names the ``gguf`` package's
tensor map gives the Hugging Face ones (the pooler and ``position_ids`` left out, as there).

Test tooling: no GGUF encoder ships as a package, and this makes one of a real model, so llama.cpp's
vectors can be checked against the MLX engine's on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

_POOLING = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}
_SKIPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
# Added to the activations rather than multiplied: llama.cpp's converter keeps them float32.
_ALWAYS_F32 = ("position_embd.weight", "token_types.weight")


def write_bert_gguf(model_dir: Path, path: Path, f16: bool = True) -> Path:
    """Write ``model_dir`` (config.json, model.safetensors, tokenizer.json, sentence-transformers
    files) as ``path``; weight matrices in float16 unless ``f16`` is false (llama.cpp's converter's
    default is float16 too), vectors and the added embeddings in float32."""
    config = json.loads((model_dir / "config.json").read_text())
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_causal_attention(False)
    pooling = _pooling_type(model_dir)
    if pooling is not None:
        writer.add_pooling_type(pooling)
    _vocabulary(writer, model_dir, config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
    for name, tensor in load_file(str(model_dir / "model.safetensors")).items():
        name = name.removeprefix("bert.")
        if name in _SKIPPED:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {name}")
        half = f16 and tensor.ndim == 2 and gguf_name not in _ALWAYS_F32
        data = tensor.astype(np.float16 if half else np.float32)
        writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _pooling_type(model_dir: Path) -> gguf.PoolingType | None:
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    folder = next((m["path"] for m in modules if m["type"] == "sentence_transformers.models.Pooling"), None)
    if folder is None:
        return None
    settings = json.loads((model_dir / folder / "config.json").read_text())
    return next(kind for key, kind in _POOLING.items() if settings.get(key))


def _vocabulary(writer: gguf.GGUFWriter, model_dir: Path, config: dict) -> None:
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    special = {t["content"] for t in tokenizer["added_tokens"] if t["special"]}
    by_id = {i: token for token, i in vocab.items()}
    tokens, types = [], []
    for i in range(config["vocab_size"]):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in special:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_token_type_count(config.get("type_vocab_size", 1))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer)
