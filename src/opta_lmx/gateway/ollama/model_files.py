"""What a model's own files say about it, for ``/api/tags``, ``/api/show`` and ``/api/ps``:
architecture, context length, size, chat template and capabilities, read without loading it.

An MLX model is a directory (``config.json``, ``tokenizer_config.json``, ``tokenizer.json``,
``*.safetensors``); a GGUF model is one file whose metadata the ``gguf`` package reads (see
``gguf_files``). ``model_info`` uses GGUF's key names (``general.architecture``,
``<arch>.context_length``, ...), which Ollama's clients read, for both.

The gateway never imports an engine: capabilities come from the files the engine would read.
``thinking`` is the same test mlx-lm's tokenizer wrapper makes (a pair of thinking markers in the
vocabulary), ``tools`` means the chat template renders a ``tools`` variable.
"""

from __future__ import annotations

import json
import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

# Thinking marker pairs the worker's reasoning split knows (those mlx-lm infers from the vocab).
THINKING_MARKERS = (
    ("<think>", "</think>"),
    ("<longcat_think>", "</longcat_think>"),
    ("<|think:start|>", "<|think:end|>"),
    ("<|channel>", "<channel|>"),
)
_XTML_MARKERS = ("<|open|>", "<|close|>", "<|sep|>", "<|end_of_msg|>")
_TOOLS_VARIABLE = re.compile(r"\btools\b")

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


class ModelFacts(msgspec.Struct, frozen=True):
    """``format`` is Ollama's word: "safetensors" (an MLX directory) or "gguf"."""

    format: str
    architecture: str
    context_length: int
    parameter_count: int
    quantization: str
    size: int  # bytes on disk
    modified: float  # the newest file's mtime, seconds since the epoch
    template: str  # the chat template (Jinja), "" if the model has none
    capabilities: list[str]
    info: dict[str, Any]  # Ollama's ``model_info``


def read_model_files(path: str) -> ModelFacts:
    """The facts about the model at ``path`` (a directory or a ``.gguf`` file); read once per
    version of its files (cached by modification time and size)."""
    files = _model_files(Path(path))
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _read(path, stamp)


def _model_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(f for f in path.iterdir() if f.is_file())


def unknown(format: str, size: int = 0, modified: float = 0.0) -> ModelFacts:
    """What is known of a model whose files cannot be read (missing, damaged, no reader)."""
    return ModelFacts(format, "", 0, 0, "", size, modified, "", ["completion"], {"general.architecture": ""})


@lru_cache(maxsize=64)
def _read(path: str, stamp: tuple[tuple[str, int, int], ...]) -> ModelFacts:
    if not stamp:
        return unknown("")
    size = sum(entry[2] for entry in stamp)
    modified = max((entry[1] for entry in stamp), default=0) / 1e9
    gguf_file = _gguf_file(Path(path))
    if gguf_file is not None:
        from opta_lmx.gateway.ollama.gguf_files import read_gguf

        return read_gguf(gguf_file, size, modified)
    return _read_mlx(Path(path), size, modified)


def _gguf_file(path: Path) -> Path | None:
    if path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists():
        return next(iter(sorted(path.glob("*.gguf"))), None)
    return None


def capabilities(template: str, vocab: set[str]) -> list[str]:
    """Ollama's capability names this model has: it completes text; ``tools`` if its template
    renders tools; ``thinking`` if its vocabulary has thinking markers."""
    found = ["completion"]
    if _TOOLS_VARIABLE.search(template):
        found.append("tools")
    if has_thinking_markers(vocab):
        found.append("thinking")
    return found


def has_thinking_markers(vocab: set[str]) -> bool:
    return any(start in vocab and end in vocab for start, end in THINKING_MARKERS) or all(
        marker in vocab for marker in _XTML_MARKERS
    )


def marker_candidates() -> set[str]:
    """Every vocabulary entry ``has_thinking_markers`` looks at (a vocabulary is large: look
    these up instead of keeping it)."""
    return {m for pair in THINKING_MARKERS for m in pair} | set(_XTML_MARKERS)


def human_number(n: int) -> str:
    """Parameter counts as Ollama writes them: 8.0B, 135M, 512K."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.0f}M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}K"
    return str(n)


# -- MLX directories ------------------------------------------------------------------------


def _json_file(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_mlx(path: Path, size: int, modified: float) -> ModelFacts:
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
