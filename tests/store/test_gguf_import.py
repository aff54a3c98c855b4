"""The GGUF importer on synthetic files in each architecture's layout (names, llama.cpp's
transforms, quantization kept or dequantized, the rebuilt tokenizer), and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model
from tokenizers import Tokenizer

from opta_lmx.errors import ModelStoreError, UnsupportedModel
from opta_lmx.store.convert import convert
from opta_lmx.store.gguf_architectures import llama3_rope_factors
from opta_lmx.store.gguf_import import repack
from tests.support.gguf_models import Q, write_gguf

CASES = [
    ("llama", Q.F32), ("llama", Q.Q8_0), ("llama", Q.Q4_0), ("llama", Q.Q4_1), ("llama", Q.Q5_0),
    ("qwen2", Q.F32), ("qwen2", Q.Q4_1),
    ("qwen3", Q.F32), ("qwen3", Q.Q8_0),
    ("gemma3", Q.F32), ("gemma3", Q.Q4_0),
]


def _dense(params: dict[str, mx.array], name: str, config: dict) -> np.ndarray:
    base = name.removesuffix(".weight")
    if f"{base}.scales" not in params:
        return np.array(params[name])
    scales = params[f"{base}.scales"]
    bits = params[name].shape[-1] * 32 // (scales.shape[-1] * 32)
    return np.array(mx.dequantize(params[name], scales, params[f"{base}.biases"], group_size=32, bits=bits))


@pytest.mark.parametrize(("arch", "quant"), CASES, ids=lambda v: getattr(v, "name", v))
def test_import_gives_the_hugging_face_weights(tmp_path: Path, tiny_model: Path, arch: str, quant: Q) -> None:
    expected = write_gguf(tmp_path / "m.gguf", arch, tiny_model, quant)
    out = convert(tmp_path / "m.gguf", tmp_path / "mlx")
    model, config = load_model(out)  # strict: every parameter present, every shape right
    params = dict(tree_flatten(model.parameters()))
    kept = quant in (Q.Q8_0, Q.Q4_0, Q.Q4_1)
    assert ("model.layers.0.mlp.up_proj.scales" in params) == kept
    if config["tie_word_embeddings"]:
        expected.pop("lm_head.weight", None)
    for name, want in expected.items():
        np.testing.assert_allclose(_dense(params, name, config), want, atol=1e-6, err_msg=name)
    assert config["torch_dtype"] == "float32"


def test_llama3_rope_factors_become_its_rope_scaling(tmp_path: Path, tiny_model: Path) -> None:
    scaling = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    factors = llama3_rope_factors(10000.0, 16, scaling)
    write_gguf(tmp_path / "m.gguf", "llama", tiny_model, rope_freqs=factors)
    out = convert(tmp_path / "m.gguf", tmp_path / "mlx")
    _, config = load_model(out)
    assert config["rope_scaling"] == {"rope_type": "llama3", **scaling}
    write_gguf(tmp_path / "odd.gguf", "llama", tiny_model, rope_freqs=factors[::-1].copy())
    with pytest.raises(UnsupportedModel, match="not Llama 3's rope scaling"):
        convert(tmp_path / "odd.gguf", tmp_path / "odd")


def test_repack_matches_the_gguf_blocks() -> None:
    data = np.random.default_rng(1).standard_normal((8, 128)).astype(np.float32)
    for quant, bits in ((Q.Q4_0, 4), (Q.Q4_1, 4), (Q.Q8_0, 8)):
        blocks = gguf.quants.quantize(data, quant)
        weight, scales, biases = repack(blocks, quant)
        got = mx.dequantize(mx.array(weight), mx.array(scales), mx.array(biases), group_size=32, bits=bits)
        np.testing.assert_allclose(np.array(got), gguf.quants.dequantize(blocks, quant), atol=1e-6, err_msg=quant.name)


def test_rebuilt_tokenizer_tokenizes_like_the_original(tmp_path: Path, tiny_model: Path) -> None:
    write_gguf(tmp_path / "m.gguf", "qwen2", tiny_model)
    out = convert(tmp_path / "m.gguf", tmp_path / "mlx")
    original = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    rebuilt = Tokenizer.from_file(str(out / "tokenizer.json"))
    texts = [
        "Hello, world! It's 2026.",
        "<|im_start|>user\nhi<|im_end|>\n",
        '<tool_call>\n{"name": "f"}\n</tool_call>',
        "  spaces\tand\n\nnew lines — ünïcödé",
    ]
    for text in texts:
        assert rebuilt.encode(text).ids == original.encode(text).ids, text
        assert rebuilt.decode(rebuilt.encode(text).ids, skip_special_tokens=False) == text
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["bos_token"] == "<|im_start|>"
    assert config["chat_template"] == json.loads((tiny_model / "tokenizer_config.json").read_text())["chat_template"]


def test_unsupported_architecture_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((2, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModel, match="architecture 'mamba' cannot be imported to MLX"):
        convert(tmp_path / "m.gguf", tmp_path / "out" / "mlx")
    assert list((tmp_path / "out").iterdir()) == []  # no half-written model, no staging left


def test_unknown_pre_tokenizer_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    write_gguf(tmp_path / "m.gguf", "llama", tiny_model)
    data = (tmp_path / "m.gguf").read_bytes()
    # Same length, so the header stays valid: "default" -> "defautt".
    (tmp_path / "m.gguf").write_bytes(data.replace(b"\x07\x00\x00\x00\x00\x00\x00\x00default", b"\x07\x00\x00\x00\x00\x00\x00\x00defautt", 1))
    with pytest.raises(UnsupportedModel, match="pre-tokenizer 'defautt' is not supported"):
        convert(tmp_path / "m.gguf", tmp_path / "mlx")


def test_convert_refuses_bad_sources_and_existing_destinations(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelStoreError, match="neither a GGUF file nor a model directory"):
        convert(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ModelStoreError, match="already exists"):
        convert(tiny_model, tmp_path / "empty")
    with pytest.raises(ModelStoreError, match="bits must be one of"):
        convert(tiny_model, tmp_path / "out", bits=7)


def test_cli_convert_quantizes_a_directory(tmp_path: Path, tiny_model: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "opta_lmx", "convert", str(tiny_model), str(tmp_path / "q8"), "--bits", "8", "--group-size", "32"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "q8" / "config.json").read_text())
    assert config["quantization"]["bits"] == 8 and config["quantization"]["group_size"] == 32
    load_model(tmp_path / "q8")
    bad = subprocess.run([sys.executable, "-m", "opta_lmx", "convert", str(tmp_path / "nothing.gguf"), str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "opta-lmx: " in bad.stderr and "Traceback" not in bad.stderr
