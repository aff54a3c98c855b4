"""Small GGUF files written the way llama.cpp's converter writes them (``gguf.GGUFWriter``): random
weights in the shapes of an architecture, q/k rows permuted for llama, Gemma's norms stored as
1 + w, and the vocabulary of the tiny demo model's tokenizer. For mechanics tests of the importer
(names, transforms, shapes, tokenizer); what a model says is tested on real files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class Shape:
    hidden: int = 64
    layers: int = 2
    ff: int = 128
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    context: int = 256


def llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to llama q/k rows (LlamaModel.permute)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_gguf(
    path: Path,
    arch: str,
    tokenizer_dir: Path,
    quant: Q = Q.F32,
    shape: Shape = Shape(),
    seed: int = 0,
    rope_freqs: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Write the GGUF; returns the Hugging Face-named float32 weights a correct import must give
    (the quantized ones as their exact dequantized values). ``rope_freqs``: llama.cpp's tensor of
    per-dimension rope factors (Llama 3)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, types, merges = _vocab(tokenizer_dir)
    writer = gguf.GGUFWriter(str(path), arch)
    template = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["chat_template"]
    _metadata(writer, arch, shape, tokens, types, merges, template, quant)
    expected: dict[str, np.ndarray] = {}

    def add(gguf_name: str, hf_name: str, rows: int, cols: int | None = None, norm: bool = False) -> None:
        data = (rng.standard_normal((rows, cols) if cols else (rows,)) * 0.1).astype(np.float32)
        stored = data
        if norm and arch == "gemma3":
            stored = data + 1.0
        if arch == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            stored = llama_cpp_permute(data, shape.heads if "attn_q" in gguf_name else shape.kv_heads)
        if cols and quant != Q.F32:
            packed = gguf.quants.quantize(stored, quant)
            writer.add_tensor(gguf_name, packed, raw_dtype=quant)
            data = gguf.quants.dequantize(gguf.quants.quantize(data, quant), quant)
        else:
            writer.add_tensor(gguf_name, stored)
        expected[hf_name] = data

    h, hd = shape.hidden, shape.head_dim
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    add("token_embd.weight", "model.embed_tokens.weight", len(tokens), h)
    add("output_norm.weight", "model.norm.weight", h, norm=True)
    if arch == "llama":
        add("output.weight", "lm_head.weight", len(tokens), h)
    for i in range(shape.layers):
        blk, hf = f"blk.{i}", f"model.layers.{i}"
        add(f"{blk}.attn_norm.weight", f"{hf}.input_layernorm.weight", h, norm=True)
        add(f"{blk}.attn_q.weight", f"{hf}.self_attn.q_proj.weight", shape.heads * hd, h)
        add(f"{blk}.attn_k.weight", f"{hf}.self_attn.k_proj.weight", shape.kv_heads * hd, h)
        add(f"{blk}.attn_v.weight", f"{hf}.self_attn.v_proj.weight", shape.kv_heads * hd, h)
        add(f"{blk}.attn_output.weight", f"{hf}.self_attn.o_proj.weight", h, shape.heads * hd)
        add(f"{blk}.ffn_gate.weight", f"{hf}.mlp.gate_proj.weight", shape.ff, h)
        add(f"{blk}.ffn_up.weight", f"{hf}.mlp.up_proj.weight", shape.ff, h)
        add(f"{blk}.ffn_down.weight", f"{hf}.mlp.down_proj.weight", h, shape.ff)
        if arch == "qwen2":
            for part, rows in (("q", shape.heads * hd), ("k", shape.kv_heads * hd), ("v", shape.kv_heads * hd)):
                add(f"{blk}.attn_{part}.bias", f"{hf}.self_attn.{part}_proj.bias", rows)
        if arch in ("qwen3", "gemma3"):
            add(f"{blk}.attn_q_norm.weight", f"{hf}.self_attn.q_norm.weight", hd, norm=True)
            add(f"{blk}.attn_k_norm.weight", f"{hf}.self_attn.k_norm.weight", hd, norm=True)
        if arch == "gemma3":
            add(f"{blk}.post_attention_norm.weight", f"{hf}.post_attention_layernorm.weight", h, norm=True)
            add(f"{blk}.ffn_norm.weight", f"{hf}.pre_feedforward_layernorm.weight", h, norm=True)
            add(f"{blk}.post_ffw_norm.weight", f"{hf}.post_feedforward_layernorm.weight", h, norm=True)
        else:
            add(f"{blk}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight", h, norm=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


_FILE_TYPES = {
    Q.F32: gguf.LlamaFileType.ALL_F32,
    Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
    Q.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
    Q.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0,
}


def _metadata(
    writer: gguf.GGUFWriter,
    arch: str,
    shape: Shape,
    tokens: list[str],
    types: list[int],
    merges: list[str],
    template: str,
    quant: Q,
) -> None:
    writer.add_name(f"synthetic {arch}")
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ff)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    if arch != "qwen2":
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    writer.add_file_type(_FILE_TYPES[quant])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(template)


def _vocab(tokenizer_dir: Path) -> tuple[list[str], list[int], list[str]]:
    """Tokens in id order, their llama.cpp types (3 control, 4 user-defined, 1 normal), merges."""
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    kinds: dict[str, int] = {}
    for added in data["added_tokens"]:
        vocab[added["content"]] = added["id"]
        kinds[added["content"]] = 3 if added["special"] else 4
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return tokens, [kinds.get(t, 1) for t in tokens], merges
