import hashlib
import json
from pathlib import Path

import pytest
from mlx.utils import tree_flatten
from mlx_lm import load

from opta_lmx.demo.builder import build_demo_model

FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def digest(path: Path) -> dict[str, str]:
    return {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in FILES}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path, tiny_model: Path) -> None:
    again = build_demo_model(tmp_path / "again", "tiny", seed=0)
    other = build_demo_model(tmp_path / "other", "tiny", seed=1)
    assert digest(again) == digest(tiny_model)
    assert digest(other)["model.safetensors"] != digest(tiny_model)["model.safetensors"]
    assert digest(other)["tokenizer.json"] == digest(tiny_model)["tokenizer.json"]


def test_tiny_model_loads_in_mlx_lm_with_its_real_tokenizer(tiny_model: Path) -> None:
    model, tokenizer = load(str(tiny_model))
    params = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert 80_000 <= params <= 200_000
    text = "The quick brown fox, 42 times: déjà vu!"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # BPE merges happened: not one token per byte
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert tokenizer.eos_token_ids == {config["eos_token_id"]}


def test_chat_template_renders_roles_and_generation_prompt(tiny_model: Path) -> None:
    _, tokenizer = load(str(tiny_model))
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("size", ["small"])
def test_small_shape_is_in_the_benchmark_range(size: str) -> None:
    from opta_lmx.demo.builder import SHAPES

    s = SHAPES[size]
    per_layer = 2 * s.hidden_size**2 + 2 * s.hidden_size * (
        s.hidden_size * s.num_key_value_heads // s.num_attention_heads
    ) + 3 * s.hidden_size * s.intermediate_size
    total = s.num_hidden_layers * per_layer + 2 * s.vocab_size * s.hidden_size
    assert 100e6 <= total <= 200e6


def test_context_length_and_vocabulary_can_be_set(tmp_path: Path) -> None:
    from opta_lmx.demo.builder import build_demo_model

    path = build_demo_model(tmp_path / "long", "tiny", context=32768, vocab=2048)
    config = json.loads((path / "config.json").read_text())
    assert config["max_position_embeddings"] == 32768
    assert json.loads((path / "tokenizer_config.json").read_text())["model_max_length"] == 32768
    _, tokenizer = load(str(path))
    assert config["vocab_size"] == len(tokenizer) == 2048
    text = "def main(argv: list[str]) -> int:\n    return 0\n" * 10
    _, tiny = load(str(build_demo_model(tmp_path / "tiny", "tiny")))
    assert len(tokenizer.encode(text)) < len(tiny.encode(text))  # a wider vocabulary: fewer tokens
