"""What the GGUF importer knows of each architecture: the Hugging Face config it rebuilds from the
file's metadata, and how llama.cpp renamed and transformed the tensors on the way in.

No mlx here: the tensor fixes work on numpy arrays (rows of a dense or quantized matrix).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from opta_lmx.errors import UnsupportedModel
from opta_lmx.store.gguf_file import GGUFFile

# GGUF -> Hugging Face, per layer (``blk.N.`` -> ``model.layers.N.``) and for the whole model.
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Gemma 3 has a norm after attention and one before and after the MLP.
_GEMMA_LAYER = {
    **_LAYER,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_TOP = re.compile(r"^(\w+)\.(weight|bias)$")


@dataclass(frozen=True)
class Architecture:
    name: str
    layer_names: dict[str, str]
    config: Callable[[GGUFFile], dict[str, Any]]
    # (hf name, rows, config) -> rows: undoes what llama.cpp did to this tensor, if anything.
    fix_rows: Callable[[str, np.ndarray, dict[str, Any]], np.ndarray] | None = None
    fix_dense: Callable[[str, np.ndarray], np.ndarray] | None = None

    def hf_name(self, gguf_name: str) -> str | None:
        """The Hugging Face name of a GGUF tensor; None for tensors the MLX model does not use."""
        if match := _BLOCK.match(gguf_name):
            layer, part, kind = match.groups()
            mapped = self.layer_names.get(part)
            return f"model.layers.{layer}.{mapped}.{kind}" if mapped else None
        if match := _TOP.match(gguf_name):
            part, kind = match.groups()
            mapped = _GLOBAL.get(part)
            return f"{mapped}.{kind}" if mapped else None
        return None


def _required(gguf: GGUFFile, key: str) -> Any:
    value = gguf.arch_value(key)
    if value is None:
        raise UnsupportedModel(f"{gguf.path.name}: metadata {gguf.architecture}.{key} is missing")
    return value


def _common(gguf: GGUFFile, model_type: str) -> dict[str, Any]:
    heads = int(_required(gguf, "attention.head_count"))
    config: dict[str, Any] = {
        "model_type": model_type,
        "hidden_size": int(_required(gguf, "embedding_length")),
        "num_hidden_layers": int(_required(gguf, "block_count")),
        "intermediate_size": int(_required(gguf, "feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(gguf.arch_value("attention.head_count_kv", heads)),
        "rms_norm_eps": float(_required(gguf, "attention.layer_norm_rms_epsilon")),
        "vocab_size": len(gguf.metadata.get("tokenizer.ggml.tokens") or []) or int(_required(gguf, "vocab_size")),
        "max_position_embeddings": int(gguf.arch_value("context_length", 4096)),
        "rope_theta": float(gguf.arch_value("rope.freq_base", 10000.0)),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in gguf.tensors),
    }
    if (key_length := gguf.arch_value("attention.key_length")) is not None:
        config["head_dim"] = int(key_length)
    if scaling := _rope_scaling(gguf):
        config["rope_scaling"] = scaling
    if (freqs := next((t for t in gguf.tensors if t.name == "rope_freqs.weight"), None)) is not None:
        config["rope_scaling"] = _llama3_rope(gguf, gguf.tensor_bytes(freqs).view("<f4"), config)
    return config


def _rope_scaling(gguf: GGUFFile) -> dict[str, Any] | None:
    kind = gguf.arch_value("rope.scaling.type")
    if kind in (None, "none"):
        return None
    if kind == "linear":
        return {"type": "linear", "factor": float(_required(gguf, "rope.scaling.factor"))}
    raise UnsupportedModel(f"{gguf.path.name}: rope scaling {kind!r} is not supported by the importer yet")


# Llama 3.1's rope scaling constants, which llama.cpp bakes into the rope_freqs tensor; the
# factor (8 for 3.1, 32 for 3.2) is the tensor's largest value.
_LLAMA3_LOW_FREQ_FACTOR = 1.0
_LLAMA3_HIGH_FREQ_FACTOR = 4.0
_LLAMA3_ORIGINAL_CONTEXT = 8192


def _llama3_rope(gguf: GGUFFile, freqs: np.ndarray, config: dict[str, Any]) -> dict[str, Any]:
    """The ``rope_scaling`` that gives llama.cpp's per-dimension frequency factors (``rope_freqs``,
    written for Llama 3's scaling); ``UnsupportedModel`` when no such scaling gives them."""
    scaling = {
        "rope_type": "llama3",
        "factor": float(freqs.max()),
        "low_freq_factor": _LLAMA3_LOW_FREQ_FACTOR,
        "high_freq_factor": _LLAMA3_HIGH_FREQ_FACTOR,
        "original_max_position_embeddings": _LLAMA3_ORIGINAL_CONTEXT,
    }
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if not np.allclose(llama3_rope_factors(config["rope_theta"], head_dim, scaling), freqs, rtol=1e-4):
        raise UnsupportedModel(f"{gguf.path.name}: its rope frequency factors (rope_freqs) are not Llama 3's rope scaling")
    return scaling


def llama3_rope_factors(base: float, dim: int, scaling: dict[str, Any]) -> np.ndarray:
    """Per-dimension-pair factors as llama.cpp's converter computes them for Llama 3."""
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * np.pi / freqs
    context, low, high = scaling["original_max_position_embeddings"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    smooth = (context / wavelen - low) / (high - low)
    middle = 1 / ((1 - smooth) / scaling["factor"] + smooth)
    return np.where(wavelen < context / high, 1.0, np.where(wavelen > context / low, scaling["factor"], middle))


def _llama_config(gguf: GGUFFile) -> dict[str, Any]:
    return _common(gguf, "llama")


def _qwen2_config(gguf: GGUFFile) -> dict[str, Any]:
    config = _common(gguf, "qwen2")
    config.pop("head_dim", None)
    return config


def _qwen3_config(gguf: GGUFFile) -> dict[str, Any]:
    config = _common(gguf, "qwen3")
    config.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
    return config


def _gemma3_config(gguf: GGUFFile) -> dict[str, Any]:
    config = _common(gguf, "gemma3_text")
    head_dim = config.setdefault("head_dim", 256)
    # llama.cpp's constants for Gemma 3 (not in the file): local layers use rope base 10000 and
    # every 6th layer is global; the query scale is 1/sqrt(head_dim), except for the 27B model.
    config["rope_local_base_freq"] = 10000.0
    config["sliding_window_pattern"] = 6
    config["sliding_window"] = int(gguf.arch_value("attention.sliding_window", 512))
    is_27b = config["num_hidden_layers"] == 62
    config["query_pre_attn_scalar"] = config["hidden_size"] // config["num_attention_heads"] if is_27b else head_dim
    return config


def _unpermute_qk(name: str, rows: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """llama.cpp's converter interleaves the rotary halves of each head's q and k rows (it wants
    GPT-J-style rope); the Hugging Face layout keeps them split. Works on weight, scales and biases
    alike, since a permutation of rows leaves each row's quantization groups whole."""
    if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
        heads = config["num_attention_heads"]
    elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
        heads = config["num_key_value_heads"]
    else:
        return rows
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _gemma_norm(name: str, dense: np.ndarray) -> np.ndarray:
    """llama.cpp stores Gemma's RMSNorm weights as 1 + w; the MLX model adds the 1 itself."""
    return dense - 1.0 if name.endswith("norm.weight") else dense


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", _LAYER, _llama_config, fix_rows=_unpermute_qk),
    "qwen2": Architecture("qwen2", _LAYER, _qwen2_config),
    "qwen3": Architecture("qwen3", _LAYER, _qwen3_config),
    "gemma3": Architecture("gemma3", _GEMMA_LAYER, _gemma3_config, fix_dense=_gemma_norm),
}


def architecture_of(gguf: GGUFFile) -> Architecture:
    """The importer's knowledge of ``gguf``'s architecture; ``UnsupportedModel`` naming it if none."""
    arch = ARCHITECTURES.get(gguf.architecture)
    if arch is None:
        raise UnsupportedModel(
            f"{gguf.path.name}: architecture {gguf.architecture!r} cannot be imported to MLX "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return arch
