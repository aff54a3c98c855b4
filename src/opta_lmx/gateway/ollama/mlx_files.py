"""An MLX model directory's facts: ``config.json`` (architecture, context, sizes),
``tokenizer_config.json`` or ``chat_template.jinja`` (the template), ``tokenizer.json`` (thinking
markers) and the safetensors headers (parameter count). Nothing is loaded."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import msgspec

from opta_lmx.gateway.ollama.facts import ModelFacts, capabilities, marker_candidates

# config.json keys (several spellings across architectures) -> GGUF's key under "<arch>.".
_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "context_length": ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length"),
    "embedding_length": ("hidden_size", "n_embd", "d_model"),
    "block_count": ("num_hidden_layers", "n_layer", "num_layers"),
    "feed_forward_length": ("intermediate_size", "n_inner", "ffn_dim"),
    "attention.head_count": ("num_attention_heads", "n_head"),
    "attention.head_count_kv": ("num_key_value_heads",),
    "attention.key_length": ("head_dim",),
    "attention.layer_norm_rms_epsilon": ("rms_norm_eps",),
    "rope.freq_base": ("rope_theta",),
    "vocab_size": ("vocab_size",),
}


def _json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_mlx(path: Path, size: int, modified: float) -> ModelFacts:
    config = _json_file(path / "config.json")
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    merged = {**config, **text_config}  # a multimodal model's language part holds the sizes
    tokenizer_config = _json_file(path / "tokenizer_config.json")
    arch = str(config.get("model_type") or "unknown")
    bits = _quantization_bits(config)
    parameters, dtype = _safetensors_parameters(path, bits)
    info: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": parameters}
    for key, names in _CONFIG_KEYS.items():
        value = next((merged[n] for n in names if isinstance(merged.get(n), (int, float))), None)
        if value is not None:
            info[f"{arch}.{key}"] = value
    context = int(info.get(f"{arch}.context_length") or 0) or _model_max_length(tokenizer_config)
    if context:
        info[f"{arch}.context_length"] = context
    for name in ("bos_token_id", "eos_token_id"):
        if isinstance(config.get(name), int):
            info[f"tokenizer.ggml.{name}"] = config[name]
    template = _chat_template(path, tokenizer_config)
    return ModelFacts(
        format="safetensors",
        architecture=arch,
        context_length=context,
        parameter_count=parameters,
        quantization=f"Q{bits}" if bits else dtype,
        size=size,
        modified=modified,
        template=template,
        capabilities=capabilities(template, _vocab_markers(path / "tokenizer.json")),
        info=info,
    )


def _model_max_length(tokenizer_config: dict[str, Any]) -> int:
    value = tokenizer_config.get("model_max_length")
    # Tokenizers without a limit write a huge sentinel (1e30): not a context length.
    return int(value) if isinstance(value, (int, float)) and 0 < value < 1 << 31 else 0


def _quantization_bits(config: dict[str, Any]) -> int:
    for key in ("quantization", "quantization_config"):
        value = config.get(key)
        if isinstance(value, dict) and isinstance(value.get("bits"), int):
            return value["bits"]
    return 0


def _chat_template(path: Path, tokenizer_config: dict[str, Any]) -> str:
    """Where transformers looks: ``chat_template.jinja``, ``chat_template.json``, then
    ``tokenizer_config.json`` (a string, or named templates of which "default" is used)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = _json_file(path / "chat_template.json").get("chat_template") or tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), "")
    return template if isinstance(template, str) else ""


class _AddedToken(msgspec.Struct, frozen=True):
    content: str


class _TokenizerModel(msgspec.Struct, frozen=True):
    vocab: dict[str, int] | list[Any] | None = None


class _TokenizerFile(msgspec.Struct, frozen=True):
    added_tokens: list[_AddedToken] = []
    model: _TokenizerModel = _TokenizerModel()


def _vocab_markers(path: Path) -> set[str]:
    """Which thinking markers ``tokenizer.json`` has, as added tokens or in the model's vocab."""
    try:
        tokenizer = msgspec.json.decode(path.read_bytes(), type=_TokenizerFile)
    except (OSError, msgspec.DecodeError):
        return set()
    wanted = marker_candidates()
    found = {t.content for t in tokenizer.added_tokens if t.content in wanted}
    vocab = tokenizer.model.vocab
    if isinstance(vocab, dict):
        found |= wanted & vocab.keys()
    elif isinstance(vocab, list):  # Unigram: [piece, score] pairs
        found |= {entry[0] for entry in vocab if isinstance(entry, list) and entry and entry[0] in wanted}
    return found


_DTYPE_NAMES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}


def _safetensors_parameters(path: Path, bits: int) -> tuple[int, str]:
    """Parameters counted from the safetensors headers (no tensor is read), and the dtype of the
    float weights. A quantized weight packs 32/bits values into each uint32."""
    total = 0
    dtype = ""
    for file in sorted(path.glob("*.safetensors")):
        header = _safetensors_header(file)
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, dict):
                continue
            if name.endswith((".scales", ".biases")):
                continue  # quantization bookkeeping, not parameters
            count = 1
            for dim in tensor.get("shape", []):
                count *= int(dim)
            if bits and tensor.get("dtype") == "U32":
                count = count * 32 // bits
            elif not dtype:
                dtype = _DTYPE_NAMES.get(str(tensor.get("dtype")), "")
            total += count
    return total, dtype


def _safetensors_header(file: Path) -> dict[str, Any]:
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 << 20:  # a corrupt length: the format caps headers at 100 MB
                return {}
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return {}
    return header if isinstance(header, dict) else {}
