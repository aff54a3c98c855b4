"""What /api/show and /api/tags read from a model's own files: MLX directories and GGUF files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from opta_lmx.demo.builder import build_demo_model
from opta_lmx.gateway.ollama.facts import has_thinking_markers, human_number
from opta_lmx.gateway.ollama.model_files import read_model_files


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("models") / "thinker", "tiny", thinking=True)


def test_an_mlx_directory(tiny_model: Path) -> None:
    facts = read_model_files(str(tiny_model))
    config = json.loads((tiny_model / "config.json").read_text())
    assert (facts.format, facts.architecture, facts.context_length) == (
        "safetensors",
        "llama",
        config["max_position_embeddings"],
    )
    assert facts.info["general.architecture"] == "llama"
    assert facts.info["llama.embedding_length"] == config["hidden_size"]
    assert facts.info["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert facts.info["tokenizer.ggml.eos_token_id"] == config["eos_token_id"]
    assert facts.template == json.loads((tiny_model / "tokenizer_config.json").read_text())["chat_template"]
    assert facts.capabilities == ["completion", "tools"]
    assert facts.quantization == "F32"
    assert facts.size == sum(f.stat().st_size for f in tiny_model.iterdir())
    import mlx.core as mx

    weights = mx.load(str(tiny_model / "model.safetensors"))
    assert facts.parameter_count == sum(w.size for w in weights.values())


def test_thinking_markers_in_the_vocabulary(thinker: Path) -> None:
    assert read_model_files(str(thinker)).capabilities == ["completion", "tools", "thinking"]
    assert has_thinking_markers({"<think>", "</think>"}) and not has_thinking_markers({"<think>"})
    assert has_thinking_markers({"<|open|>", "<|close|>", "<|sep|>", "<|end_of_msg|>"})


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header: dict = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape)) * (2 if dtype in ("F16", "BF16") else 4)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    data = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data + bytes(offset))


def test_a_quantized_mlx_model_counts_packed_weights(tmp_path: Path) -> None:
    config = {
        "model_type": "qwen3",
        "max_position_embeddings": 40960,
        "hidden_size": 64,
        "quantization": {"bits": 4, "group_size": 64},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")  # wins over tokenizer_config's
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ tools }}"}))
    tokenizer = {
        "added_tokens": [{"id": 5, "content": "<think>"}, {"id": 6, "content": "</think>"}],
        "model": {"vocab": {"a": 0}},
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    write_safetensors(
        tmp_path / "model.safetensors",
        {
            "embed.weight": ("U32", [100, 8]),  # 100 x 64 four-bit values
            "embed.scales": ("F16", [100, 1]),
            "embed.biases": ("F16", [100, 1]),
            "norm.weight": ("F16", [64]),
        },
    )
    facts = read_model_files(str(tmp_path))
    assert facts.parameter_count == 100 * 64 + 64
    assert (facts.quantization, facts.architecture, facts.context_length) == ("Q4", "qwen3", 40960)
    assert facts.template == "{{ messages }}"
    assert facts.capabilities == ["completion", "thinking"]  # the template used has no tools


def test_the_cache_follows_the_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 1024}))
    assert read_model_files(str(tmp_path)).context_length == 1024
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 4096}))
    assert read_model_files(str(tmp_path)).context_length == 4096


def write_gguf(path: Path, tokens: list[str], template: str) -> Path:
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(32768)
    writer.add_block_count(2)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_chat_template(template)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_file(tmp_path: Path) -> None:
    tokens = ["a", "b", "<think>", "</think>", *(f"t{i}" for i in range(100))]
    path = write_gguf(tmp_path / "model.gguf", tokens, "{% if tools %}{{ tools }}{% endif %}")
    facts = read_model_files(str(path))
    assert (facts.format, facts.architecture, facts.context_length) == ("gguf", "qwen2", 32768)
    assert facts.info["qwen2.block_count"] == 2 and facts.info["general.architecture"] == "qwen2"
    assert facts.info["tokenizer.ggml.tokens"] == []  # as Ollama shows it unless verbose
    assert "tokenizer.chat_template" not in facts.info  # it is the template
    assert facts.parameter_count == len(tokens) * 8 + 8
    assert facts.quantization == "Q4_K_M"
    assert facts.capabilities == ["completion", "tools", "thinking"]
    assert read_model_files(str(tmp_path)) == facts  # a directory holding one GGUF file


def test_the_metadata_agrees_with_the_gguf_packages_reader(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "model.gguf", ["a", "<think>"], "{{ messages }}")
    reader = gguf.GGUFReader(path)
    expected = {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.") and name not in ("tokenizer.ggml.tokens", "tokenizer.chat_template")
    }
    info = read_model_files(str(path)).info
    assert {name: info[name] for name in expected} == expected
    assert info["general.parameter_count"] == sum(int(t.n_elements) for t in reader.tensors)


def test_a_missing_or_unreadable_model(tmp_path: Path) -> None:
    assert read_model_files(str(tmp_path / "gone")).info == {"general.architecture": ""}
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    facts = read_model_files(str(broken))
    assert facts.format == "gguf" and facts.architecture == "" and facts.size == len(b"not a gguf file")
    whole = write_gguf(tmp_path / "whole.gguf", ["a"], "").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:60])  # the header stops inside the key-value list
    assert read_model_files(str(cut)).info == {"general.architecture": ""}


def test_human_numbers() -> None:
    assert [human_number(n) for n in (8_030_261_248, 134_515_008, 139_584, 512)] == ["8.0B", "135M", "140K", "512"]
