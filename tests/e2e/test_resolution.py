"""Model names, aliases and presets as a client sees them."""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest

from tests.conftest import NO_EOS, Server


def test_aliases_and_preset_defaults(make_server, tiny_model: Path) -> None:
    config = f"""
[presets.short]
max_tokens = 3
temperature = 0.0

[[models]]
name = "tiny"
path = "{tiny_model}"
aliases = ["gpt-4o-mini"]
preset = "short"
"""
    server: Server = make_server(config)
    server.wait_models()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    try:
        assert sorted(m.id for m in client.models.list().data) == ["gpt-4o-mini", "tiny"]
        messages = [{"role": "user", "content": "hi"}]
        by_alias = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert by_alias.model == "tiny"
        assert by_alias.usage.completion_tokens == 3  # the preset's max_tokens
        again = client.chat.completions.create(model="tiny", messages=messages)
        assert again.choices[0].message.content == by_alias.choices[0].message.content  # temperature 0
        longer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5)
        assert longer.usage.completion_tokens == 5  # the request's own value wins
    finally:
        client.close()


def test_a_file_that_is_not_a_gguf_model_fails_to_load_with_a_clear_reason(make_server, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    settings = "[supervisor]\nbackoff_initial = 0.1\nmax_failures = 1\n"
    server: Server = make_server(settings + f'[[models]]\nname = "g"\npath = "{gguf}"\n')
    server.wait_models({"g": "FATAL"})
    assert "llama.cpp could not load" in server.log() + (server.home / "logs" / "g.log").read_text()


def test_without_llama_cpp_python_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from opta_lmx.worker.main import load_engine_class

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'opta-lmx\[gguf\]'"):
        load_engine_class("gguf")


def test_engine_options_reach_the_engine(make_server, tiny_model: Path) -> None:
    # One request decoded at a time: four concurrent requests still all complete, in turn.
    config = f'[[models]]\nname = "one"\npath = "{tiny_model}"\n[models.options]\nbatch_size = 1\nprefill_batch_size = 1\n'
    server: Server = make_server(config)
    server.wait_models()
    from concurrent.futures import ThreadPoolExecutor

    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    try:
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: client.chat.completions.create(
                model="one", messages=[{"role": "user", "content": "hi"}], max_tokens=4, logit_bias=NO_EOS), range(4)))
        assert [r.usage.completion_tokens for r in replies] == [4] * 4
    finally:
        client.close()
    assert '"batch_size":1' in " ".join(p.cmdline()[-1] for p in server.descendants() if "opta_lmx.worker" in p.cmdline())
