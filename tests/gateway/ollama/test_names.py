"""Ollama's model names: the Hugging Face names it pulls, and what each name can stand for."""

from __future__ import annotations

import pytest

from opta_lmx.config import Config, ModelConfig
from opta_lmx.gateway.ollama.names import candidates, hugging_face_repo, served_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", ("bartowski/Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")),
        ("hf.co/org/repo", ("org/repo", None)),
        ("hf.co/org/repo:latest", ("org/repo", None)),
        ("huggingface.co/org/repo:iq3_m", ("org/repo", "iq3_m")),
        ("https://huggingface.co/org/repo", ("org/repo", None)),
        ("HF.CO/org/repo", ("org/repo", None)),
        ("llama3.2", None),
        ("llama3.2:1b", None),
        ("library/llama3", None),
        ("hf.co/org", None),
        ("hf.co/org/repo/extra", None),
        ("example.com/org/repo", None),
    ],
)
def test_hugging_face_names(name: str, expected: tuple[str, str | None] | None) -> None:
    assert hugging_face_repo(name) == expected


def test_a_name_stands_for_a_configured_or_pulled_model() -> None:
    config = Config(
        models=[
            ModelConfig(name="tiny", path="/m/tiny", aliases=["small"]),
            ModelConfig(name="org/one-GGUF", path="/m/org/one-GGUF/one.Q4_1.gguf"),
            ModelConfig(name="org/two-GGUF/two-Q4_K_M", path="/m/org/two-GGUF/two-Q4_K_M.gguf"),
            ModelConfig(name="org/two-GGUF/two-Q8_0", path="/m/org/two-GGUF/two-Q8_0.gguf"),
        ]
    )
    assert served_name("small:latest", config) == "tiny"
    assert served_name("hf.co/org/one-GGUF:Q4_1", config) == "org/one-GGUF"
    assert served_name("hf.co/org/two-GGUF:q8_0", config) == "org/two-GGUF/two-Q8_0"
    assert served_name("hf.co/org/two-GGUF:Q2_K", config) is None
    assert served_name("hf.co/org/three", config) is None
    assert candidates("hf.co/org/two-GGUF:Q4_K_M", config) == [
        "hf.co/org/two-GGUF:Q4_K_M", "org/two-GGUF/two-Q4_K_M", "org/two-GGUF",
    ]
