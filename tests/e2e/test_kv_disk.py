"""The prompt cache's disk tier through real processes: a conversation's next turn after the model's
worker was restarted (drained) or the whole server stopped (SIGTERM) starts from the caches its
previous worker wrote, and answers as a model with no cache at all does."""

from __future__ import annotations

from pathlib import Path

import openai

from opta_lmx.ctl import Client
from opta_lmx.proto import CommandResult, Restart
from tests.conftest import NO_EOS, Server, kill_tree

SYSTEM = "You are a storyteller. " + " ".join(f"Rule {i}: every animal in chapter {i} is kind." for i in range(12))


def config(model: Path) -> str:
    return f"""
[[models]]
name = "tiny"
path = "{model}"

[[models]]
name = "plain"
path = "{model}"
[models.options]
prompt_cache_entries = 0
kv_disk_bytes = 0
"""


def ask(client: openai.OpenAI, model: str, messages: list[dict]) -> tuple[str, int, int]:
    """(text, prompt tokens, cached prompt tokens) of a greedy answer."""
    reply = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, logit_bias=NO_EOS  # type: ignore[arg-type]
    )
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    return reply.choices[0].message.content or "", usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0


def test_the_next_turn_after_a_restart_and_after_a_server_stop_comes_from_disk(make_server, tiny_model: Path) -> None:
    server = make_server(config(tiny_model))
    server.wait_models()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about a fox."}]
    text, first_prompt, cached = ask(client, "tiny", messages)
    assert cached == 0

    control = Client(server.home)
    try:
        result = control.call(Restart("tiny"), 120_000)
    finally:
        control.close()
    assert isinstance(result, CommandResult) and result.ok, result
    assert list((server.home / "kv" / "tiny").glob("*.kv"))
    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "And then?"}]
    text, second_prompt, cached = ask(client, "tiny", messages)
    assert first_prompt <= cached < second_prompt  # the answer as far as it re-tokenizes the same
    assert (text, second_prompt, 0) == ask(client, "plain", messages)
    client.close()

    assert server.stop() == 0  # SIGTERM: the worker writes its caches as it exits
    again = Server(server.home, config(tiny_model)).start()
    try:
        again.wait_models()
        client = openai.OpenAI(base_url=f"{again.base_url}/v1", api_key="none", max_retries=0)
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "Is that all?"}]
        text, third_prompt, cached = ask(client, "tiny", messages)
        assert second_prompt <= cached < third_prompt
        assert (text, third_prompt, 0) == ask(client, "plain", messages)
        client.close()
    finally:
        pids = [p.pid for p in again.descendants()]
        try:
            again.stop()
        finally:
            for pid in pids:
                kill_tree(pid)
