"""GGUF -> MLX: a GGUF file becomes an MLX model directory that mlx-lm loads like any other.

Tensors are read from the file as numpy arrays. Q4_0, Q4_1 and Q8_0 blocks are MLX's affine
quantization with group size 32 in another byte order, so they are repacked and kept quantized;
every other quantization (the K-quants, Q5_*, IQ*) is dequantized with the ``gguf`` package.
Names are mapped to Hugging Face's, llama.cpp's transforms undone (``gguf_architectures``), the
tokenizer rebuilt from the vocabulary (``gguf_tokenizer``) and the chat template taken from the
metadata. Runs in the command-line process (it imports mlx): the supervisor never calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from opta_lmx.errors import UnsupportedModel
from opta_lmx.store import IMPORT_RECORD, IMPORTER_VERSION
from opta_lmx.store.gguf_architectures import Architecture, architecture_of
from opta_lmx.store.gguf_file import GGUFFile, TensorInfo, ggml_type_name, read_gguf
from opta_lmx.store.gguf_tokenizer import build_tokenizer, stop_token_ids

# (done, total) after each tensor.
Progress = Callable[[int, int], None]

_F32, _F16, _Q4_0, _Q4_1, _Q8_0, _BF16 = 0, 1, 2, 3, 8, 30
_KEPT = {_Q4_0: 4, _Q4_1: 4, _Q8_0: 8}
_GROUP_SIZE = 32


def import_gguf(src: Path, out: Path, dtype: str, keep_quantized: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Write the MLX model for the GGUF ``src`` into the existing empty directory ``out``.

    ``dtype`` (float32, float16, bfloat16) is for dense weights and quantization scales.
    Returns the written ``config.json`` object. Raises ``UnsupportedModel`` for an architecture,
    tokenizer or tensor the importer cannot handle, ``ModelStoreError`` for an unreadable file.
    """
    import mlx.core as mx

    gguf = read_gguf(src)
    gguf.check_complete()
    arch = architecture_of(gguf)
    config = arch.config(gguf)
    tokenizer_json, tokenizer_config = build_tokenizer(gguf)
    target = getattr(mx, dtype)
    weights: dict[str, mx.array] = {}
    bits_seen: list[int] = []
    for done, tensor in enumerate(gguf.tensors, 1):
        name = arch.hf_name(tensor.name)
        if name is not None:
            for key, array in _convert(gguf, tensor, name, arch, config, keep_quantized).items():
                weights[key] = mx.array(array).astype(target) if array.dtype.kind == "f" else mx.array(array)
            if keep_quantized and tensor.ggml_type in _KEPT:
                bits_seen.append(_KEPT[tensor.ggml_type])
        if progress is not None:
            progress(done, len(gguf.tensors))
    if config["tie_word_embeddings"]:
        weights.pop("lm_head.weight", None)
    if bits_seen:
        # Per-layer bits are read back from the shapes by mlx-lm; this is the default.
        config["quantization"] = {"group_size": _GROUP_SIZE, "bits": max(set(bits_seen), key=bits_seen.count)}
    stops = stop_token_ids(gguf)
    config["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    if (bos := gguf.metadata.get("tokenizer.ggml.bos_token_id")) is not None:
        config["bos_token_id"] = int(bos)
    config["torch_dtype"] = dtype
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    _write_json(out / "config.json", config)
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    _write_json(out / IMPORT_RECORD, _record(gguf, dtype, keep_quantized))
    return config


def _convert(
    gguf: GGUFFile, tensor: TensorInfo, name: str, arch: Architecture, config: dict[str, Any], keep_quantized: bool
) -> dict[str, np.ndarray]:
    raw = np.asarray(gguf.tensor_bytes(tensor))
    if keep_quantized and tensor.ggml_type in _KEPT and name.endswith(".weight") and len(tensor.shape) == 2:
        base = name[: -len(".weight")]
        parts = dict(zip(("weight", "scales", "biases"), repack(raw, tensor.ggml_type)))
        if arch.fix_rows is not None:
            parts = {k: arch.fix_rows(name, v, config) for k, v in parts.items()}
        return {f"{base}.{k}": v for k, v in parts.items()}
    dense = dequantize(raw, tensor)
    if arch.fix_rows is not None:
        dense = arch.fix_rows(name, dense, config)
    if arch.fix_dense is not None:
        dense = arch.fix_dense(name, dense)
    return {name: dense}


def dequantize(raw: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """The tensor as float32 in its numpy shape (any GGML type the ``gguf`` package reads)."""
    if tensor.ggml_type == _F32:
        return raw.view(np.float32).reshape(tensor.shape).copy()
    try:
        dense = gguf_dequantize(raw, GGMLQuantizationType(tensor.ggml_type))
    except (NotImplementedError, ValueError):
        raise UnsupportedModel(
            f"{tensor.name}: tensor type {ggml_type_name(tensor.ggml_type)} cannot be dequantized"
        ) from None
    return dense.astype(np.float32, copy=False).reshape(tensor.shape)


def repack(raw: np.ndarray, ggml_type: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_0 / Q4_1 / Q8_0 rows as MLX affine quantization (group size 32): packed uint32 weights,
    float32 scales and biases, such that value = scale * q + bias, exactly as the block's.

    A GGML 4-bit block keeps element j in the low nibble of byte j and element j + 16 in its high
    nibble; MLX packs elements in order, two to a byte, low nibble first.
    """
    rows = raw.shape[0]
    if ggml_type == _Q8_0:  # f16 d, 32 x int8 q: d * q = d * (q + 128) - 128 d
        blocks = raw.reshape(rows, -1, 34)
        d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        q = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return q.reshape(rows, -1).view(np.uint32), d, -128.0 * d
    size = 18 if ggml_type == _Q4_0 else 20
    blocks = raw.reshape(rows, -1, size)
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    if ggml_type == _Q4_1:  # f16 d, f16 m, 16 bytes: d * q + m
        bias = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    else:  # Q4_0 - f16 d, 16 bytes: d * (q - 8)
        bias = -8.0 * d
    nibbles = blocks[..., size - 16 :]
    elements = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
    packed = (elements[..., 0::2] | (elements[..., 1::2] << 4)).astype(np.uint8)
    return packed.reshape(rows, -1).view(np.uint32), d, bias


def _record(gguf: GGUFFile, dtype: str, keep_quantized: bool) -> dict[str, Any]:
    """What the directory was made from, so that a later run can tell whether it is current."""
    return {
        "importer_version": IMPORTER_VERSION,
        "source": str(gguf.path),
        "source_name": gguf.path.name,
        "source_bytes": gguf.path.stat().st_size,
        "dtype": dtype,
        "kept_quantization": keep_quantized,
    }


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
