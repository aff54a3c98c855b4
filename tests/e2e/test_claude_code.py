"""The real Claude Code CLI runs one turn against a real server (Anthropic's Messages API).

Its requests are what the test is about: a long system prompt of text blocks (the first a
billing line that changes every request), ``role: "system"`` turns inside ``messages``, 12 tools,
``thinking``, ``context_management``, per-turn ``output_config``, streaming. The random model's
reply is gibberish; a preset's stop strings end it within a few tokens, so the turn finishes
with ``stop_sequence`` instead of running to the context's end.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from opta_lmx.demo.builder import build_demo_model
from tests.support.agent_clis import agent_cli

# Above Claude Code's prompt in the demo tokenizer's tokens: about 29k with the tiny vocabulary,
# about half with 8,192 tokens, which also quarters its attention's cost on a CPU.
CONTEXT = 24576
VOCAB = 8192


def test_claude_print_mode_completes_a_turn(make_server, tmp_path: Path) -> None:
    claude = agent_cli("claude")
    model = build_demo_model(tmp_path / "long", "tiny", context=CONTEXT, vocab=VOCAB)
    server = make_server(
        f'[presets.short]\nstop = [" ", "e", "\\n"]\n'
        f'[[models]]\nname = "tiny"\npath = "{model}"\npreset = "short"\n'
    )
    server.wait_models()
    home = tmp_path / "claude-home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": server.base_url,
        "ANTHROPIC_API_KEY": "sk-local",
        "ANTHROPIC_MODEL": "tiny",
        "ANTHROPIC_SMALL_FAST_MODEL": "tiny",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    done = subprocess.run(
        [str(claude), "-p", "Say hi"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, (done.stdout, done.stderr, server.log())
    assert "API Error" not in done.stdout + done.stderr
    assert "unexpected error" not in server.log()
