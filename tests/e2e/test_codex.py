"""The real Codex CLI (npm ``@openai/codex``, pinned in tests/support/agent_clis.py) runs one turn
against the server through the Responses API, on a random-weight demo model. Its reply is
gibberish; what is tested is that the protocol carries Codex through a turn without an API error.

Set-up choices, each so that the test depends on nothing the random model writes:
- Codex retries a failed request; here it may not (``request_max_retries`` and
  ``stream_max_retries`` are 0), so a server error fails the turn, and the test, at once.
- The model's preset stops its reply at the first space or "e": a random model may otherwise
  write until the context is full, which Codex would see as an incomplete response.
- Codex's prompt stays as it sends it: its instructions, developer and user messages, function
  and namespace tools, the hosted ``web_search`` tool, ``store: false``, ``include`` and
  ``reasoning``, a streamed reply. The demo model has a vocabulary of 8,192 tokens, which writes
  that prompt in about half the tokens of the tiny one's 512: on a CPU the prompt's attention
  costs the square of its length.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from opta_lmx.demo.builder import build_demo_model
from tests.conftest import Server, served
from tests.support.agent_clis import agent_cli

CONTEXT = 24576
VOCAB = 8192
CONFIG = """\
model = "tiny"
model_provider = "opta"
[analytics]
enabled = false

[model_providers.opta]
name = "Opta-LMX"
base_url = "{base_url}/v1"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""
# Codex's own notice for a model it has no metadata for: an item of type "error", not an API error.
NO_METADATA = "Model metadata for `tiny` not found"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("codex-server")
    model = build_demo_model(home / "tiny", "tiny", context=CONTEXT, vocab=VOCAB)
    config = f'[presets.short]\nstop = [" ", "e"]\n\n[[models]]\nname = "tiny"\npath = "{model}"\npreset = "short"\n'
    with served(home, config) as srv:
        yield srv


def run_codex(server: Server, tmp_path: Path, prompt: str) -> list[dict]:
    """``codex exec --json``'s events, after checking it exited 0."""
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(CONFIG.format(base_url=server.base_url))
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = subprocess.run(
        [str(agent_cli("codex")), "exec", "--strict-config", "--json", "--skip-git-repo-check", prompt],
        cwd=workdir,
        env={**server.env, "CODEX_HOME": str(codex_home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"codex exited {result.returncode}\n{result.stdout}\n{result.stderr}\n{server.log()}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_codex_exec_runs_a_turn(server: Server, tmp_path: Path) -> None:
    events = run_codex(server, tmp_path, "say hi")
    kinds = [e["type"] for e in events]
    assert "turn.failed" not in kinds and "error" not in kinds, events
    for event in events:
        item = event.get("item", {})
        assert item.get("type") != "error" or item["message"].startswith(NO_METADATA), item
    (completed,) = [e for e in events if e["type"] == "turn.completed"]
    usage = completed["usage"]
    # Codex's messages and tools reached the model: thousands of prompt tokens, as the server counted them.
    assert usage["input_tokens"] > 8000 and usage["output_tokens"] >= 1  # the whole prompt
    log = server.log_path.read_text()
    assert "Traceback" not in log and " ended with " not in log, log[-4000:]
