"""A Hugging Face tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) rebuilt from a GGUF's
vocabulary, the way llama.cpp tokenizes with it.

A GGUF stores llama.cpp's view of the tokenizer under ``tokenizer.ggml.*``: the tokens, their
types (3 = control, 4 = user-defined, 6 = byte), merges (byte-level BPE) or scores
(sentencepiece), and the name of the pre-tokenizer (``tokenizer.ggml.pre``), whose split rule
lives in llama.cpp's code, not in the file. Each known name maps to its rule here; an unknown
one is refused rather than guessed, since a wrong split gives a model tokens it never saw.
transformers has the same rebuild, but its GGUF path imports torch.
"""

from __future__ import annotations

from typing import Any

from opta_lmx.errors import UnsupportedModel
from opta_lmx.store.gguf_file import GGUFFile

_CONTROL, _USER_DEFINED, _NORMAL = 3, 4, 1

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp), by the name GGUF files give them.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# name -> (split digits one by one first, regex)
PRE_TOKENIZERS: dict[str, tuple[bool, str]] = {
    "default": (False, _GPT2),
    "gpt2": (False, _GPT2),
    "smollm": (True, _GPT2),
    "llama-bpe": (False, _LLAMA3),
    "llama3": (False, _LLAMA3),
    "llama-v3": (False, _LLAMA3),
    "smaug-bpe": (False, _LLAMA3),
    "qwen2": (False, _QWEN2),
    "deepseek-r1-qwen": (False, _QWEN2),
    "tekken": (False, _TEKKEN),
}


def build_tokenizer(gguf: GGUFFile) -> tuple[str, dict[str, Any]]:
    """``(tokenizer.json text, tokenizer_config.json object)`` for ``gguf``'s vocabulary.

    Raises ``UnsupportedModel`` for a tokenizer kind or pre-tokenizer this does not know.
    """
    meta = gguf.metadata
    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise UnsupportedModel(f"{gguf.path.name}: the GGUF has no vocabulary (tokenizer.ggml.tokens)")
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    if kind == "gpt2":
        tokenizer = _byte_level(gguf, tokens)
    elif kind == "llama":
        tokenizer = _sentencepiece(gguf, tokens)
    else:
        raise UnsupportedModel(
            f"{gguf.path.name}: tokenizer kind {kind!r} is not supported (gpt2 byte-level BPE and llama sentencepiece are)"
        )
    _add_special_tokens(tokenizer, tokens, types)
    special = _special_tokens(meta, tokens)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    if add_bos and special.get("bos_token"):
        from tokenizers import processors

        bos = special["bos_token"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": add_bos,
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(gguf.arch_value("context_length", 4096)),
    }
    if template := meta.get("tokenizer.chat_template"):
        config["chat_template"] = template
    return tokenizer.to_str(), config


def stop_token_ids(gguf: GGUFFile) -> list[int]:
    """The ids that end a generation: end of sequence, and end of turn where the file names one."""
    meta = gguf.metadata
    ids = [meta.get(f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot", "eom")]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _byte_level(gguf: GGUFFile, tokens: list[str]):  # -> tokenizers.Tokenizer
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    pre = gguf.metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedModel(
            f"{gguf.path.name}: pre-tokenizer {pre!r} is not supported (known: {', '.join(sorted(PRE_TOKENIZERS))})"
        )
    merges = [tuple(m.split(" ", 1)) for m in gguf.metadata.get("tokenizer.ggml.merges") or []]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    digits, regex = PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _sentencepiece(gguf: GGUFFile, tokens: list[str]):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, normalizers

    meta = gguf.metadata
    gemma = gguf.architecture.startswith("gemma")
    if gemma:
        # Gemma files spell tokens made only of spaces with real spaces; the model's text has "▁".
        tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in tokens]
        # Gemma's scores do not follow its merge order; the order of the tokens in the file does.
        scores = [-float(i) for i in range(len(tokens))]
    else:
        scores = [float(s) for s in meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)]
    vocab = {token: i for i, token in enumerate(tokens)}
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else None
    model = models.BPE(vocab, _merges_from_scores(vocab, scores), unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", not gemma))
    replace = normalizers.Replace(" ", "\u2581")
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), replace]) if prefix else replace
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tokenizer


def _merges_from_scores(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Sentencepiece keeps no merges: every split of a token into two tokens is one, ranked by the
    merged token's score (best first), as llama.cpp's tokenizer merges highest-scoring pairs first.
    Ties go to the longer left piece, then the lower ids (transformers' order)."""
    merges: list[tuple[float, int, int, int, int, str, str]] = []
    append = merges.append
    for token, index in vocab.items():
        length = len(token)
        score = -scores[index]
        for cut in range(1, length):
            left = token[:cut]
            if left in vocab:
                right = token[cut:]
                if right in vocab:
                    append((score, -cut, cut - length, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(m[5], m[6]) for m in merges]


def _add_special_tokens(tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens: both are
    matched whole in text (as llama.cpp does), never cut by the merges."""
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    control = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED and t in vocab]
    tokenizer.add_special_tokens(control)
    tokenizer.add_tokens(user)


def _special_tokens(meta: dict[str, Any], tokens: list[str]) -> dict[str, str | None]:
    names = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding"}
    special: dict[str, str | None] = {}
    for name, key in names.items():
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        special[name] = tokens[index] if index is not None and 0 <= index < len(tokens) else None
    return special
