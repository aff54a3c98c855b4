"""Write a loadable MLX model directory with random weights (llama) and a trained BPE tokenizer.

The output is gibberish, but every code path (load, chat template, tokenize, generate, detokenize,
stop) is the real one. Nothing is downloaded: the tokenizer is trained on text the package ships
(plus, for the larger size, the Python standard library's sources).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Literal

import msgspec

Size = Literal["tiny", "small"]

# Large enough that greedy decoding does not collapse into one repeated token, with an untied head
# (tied random embeddings make every logit favour the last token).
_INIT_STD = 0.3

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
THINKING_TOKENS = ["<think>", "</think>"]
# Added, not special (as in Qwen's vocabularies): plain text that happens to be one token, so a
# grammar can spell it and the detokenizer writes it.
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]
# ChatML with tools the way Qwen2.5 and Hermes write them: the functions' JSON in the system turn,
# calls as ``<tool_call>`` JSON ``</tool_call>``, results in ``tool`` turns. mlx-lm recognises
# this format (its ``json_tools`` parser) from the markers and ``tool_call.name``.
CHAT_TEMPLATE = (
    "{% if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ '# Tools\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\n</tools>\nTo call a function, answer <tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant\n' + (message['content'] or '') }}"
    "{% for tool_call in message['tool_calls'] %}"
    "{% if tool_call['function'] is defined %}{% set tool_call = tool_call['function'] %}{% endif %}"
    "{{ '\n<tool_call>\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}"
    "{{ tool_call.arguments | tojson }}{{ '}\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Reasoning models' templates open the thinking block in the generation prompt; with
# enable_thinking false they write it empty and closed, as Qwen3's does.
THINKING_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{% if enable_thinking is defined and not enable_thinking %}"
    "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}"
    "{% else %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}{% endif %}",
)


class Shape(msgspec.Struct, frozen=True):
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int


SHAPES: dict[str, Shape] = {
    # ~140k parameters: loads in milliseconds, for tests.
    "tiny": Shape(512, 64, 2, 128, 4, 2, 2048),
    # ~120M parameters in a realistic shape, for benchmarks.
    "small": Shape(8192, 768, 14, 2048, 12, 4, 4096),
}


def build_demo_model(
    path: Path,
    size: Size = "tiny",
    seed: int = 0,
    thinking: bool = False,
    context: int | None = None,
    vocab: int | None = None,
) -> Path:
    """Write the model into ``path`` (created if missing); returns ``path``. Deterministic per seed.

    ``thinking`` adds ``<think>``/``</think>`` tokens and a template that opens the thinking block,
    the way reasoning models do. ``context`` sets the context length (the size's own otherwise):
    agent clients send system prompts of many thousand tokens. ``vocab`` sets the vocabulary size
    (the size's own otherwise): a larger one writes a long prompt in fewer tokens, and on a CPU a
    long prompt's attention costs the square of its length."""
    shape = SHAPES[size]
    if context is not None:
        shape = msgspec.structs.replace(shape, max_position_embeddings=context)
    if vocab is not None:
        shape = msgspec.structs.replace(shape, vocab_size=vocab)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(shape.vocab_size, SPECIAL_TOKENS + TOOL_TOKENS + (THINKING_TOKENS if thinking else []))
    _write_tokenizer(path / "tokenizer.json", tokenizer)
    eos_id = tokenizer.token_to_id("<|im_end|>")
    config = {
        "model_type": "llama",
        **msgspec.structs.asdict(shape),
        "vocab_size": tokenizer.get_vocab_size(),
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "eos_token_id": eos_id,
        "bos_token_id": None,
    }
    _write_json(path / "config.json", config)
    _write_json(
        path / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "model_max_length": shape.max_position_embeddings,
            "chat_template": THINKING_TEMPLATE if thinking else CHAT_TEMPLATE,
        },
    )
    _write_weights(path / "model.safetensors", config, seed)
    return path


def _write_tokenizer(path: Path, tokenizer) -> None:  # tokenizer: tokenizers.Tokenizer
    # The trainer marks every token it is given as special; tool markers are ordinary text.
    data = json.loads(tokenizer.to_str())
    for added in data["added_tokens"]:
        if added["content"] in TOOL_TOKENS:
            added["special"] = False
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# The shipped corpus has text enough for the tiny vocabulary; a larger one trains on more.
_SHIPPED_CORPUS_VOCAB = 512


def _corpus(vocab_size: int) -> Iterator[str]:
    yield from (Path(__file__).with_name("corpus.txt").read_text(encoding="utf-8").splitlines())
    if vocab_size <= _SHIPPED_CORPUS_VOCAB:
        return
    # A larger vocabulary needs more text: the standard library's own sources, in a fixed order.
    stdlib = Path(os.__file__).parent
    for source in sorted(stdlib.glob("*.py"))[:200]:
        yield from source.read_text(encoding="utf-8", errors="replace").splitlines()


def _train_tokenizer(vocab_size: int, special_tokens: list[str]):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(vocab_size), trainer)
    return tokenizer


def _write_weights(path: Path, config: dict, seed: int) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs.from_dict(config))
    # One key per tensor, split from the seed in name order: the same seed gives the same bytes.
    params = sorted(tree_flatten(model.parameters()), key=lambda item: item[0])
    keys = mx.random.split(mx.random.key(seed), len(params))
    weights: dict[str, mx.array] = {}
    for key, (name, param) in zip(keys, params):
        if name.endswith("norm.weight"):
            weights[name] = mx.ones(param.shape, dtype=mx.float32)
        else:
            weights[name] = _INIT_STD * mx.random.normal(param.shape, key=key)
    mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})
