"""Agent sessions shaped like Claude Code's and Codex's, generated deterministically.

A session is a long system prompt (instructions) with tool definitions in the request's ``tools``,
a first user message, then turns that each add the assistant's tool call and the tool's result
(a file, a command's output, a search: 200-2,000 tokens) and ask again. The text is word salad
from a fixed vocabulary, seeded: the same arguments give the same bytes on every run and for every
server. Sizes are counted with the model's own tokenizer (``tokenizer.json``, through the
``tokenizers`` library: the harness never imports mlx).

Sessions of one ``Workload`` share the system prompt and the tools (several bots on one agent
setup); each has its own user message, calls and results (its ``seed``). The results that feed
turn 2 and the last turn have the same size, so their times to first token compare the same
amount of new text at the two ends of the history.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

_WORDS = (
    "the a file function value return error config module test build path cache request token model "
    "server worker queue batch stream context prompt system user assistant tool result line index "
    "read write open close parse check update import class method field type list map string number "
    "true false null async await yield raise except finally while for if else and or not in is with"
).split()
_IDENTS = ("handle", "load", "store", "fetch", "merge", "split", "encode", "decode", "apply", "render")
_TOOL_NAMES = (
    "read_file", "write_file", "edit_file", "list_dir", "glob", "grep", "run_shell", "run_tests",
    "web_fetch", "web_search", "todo_write", "task", "notebook_edit", "git_diff", "git_log", "ask_user",
)


@dataclass
class Turn:
    """One step of the loop: the assistant's tool call and the result that came back."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    result: str
    result_tokens: int


@dataclass
class Session:
    seed: int
    user: str
    turns: list[Turn]

    def messages(self, system: str, done: int) -> list[dict[str, Any]]:
        """The request of turn ``done + 1``: system, user, then ``done`` calls and results."""
        out: list[dict[str, Any]] = [{"role": "system", "content": system}, {"role": "user", "content": self.user}]
        for turn in self.turns[:done]:
            call = {"id": turn.call_id, "type": "function",
                    "function": {"name": turn.name, "arguments": json.dumps(turn.arguments)}}
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            out.append({"role": "tool", "tool_call_id": turn.call_id, "content": turn.result})
        return out


@dataclass
class Workload:
    system: str
    tools: list[dict[str, Any]]
    sessions: list[Session]
    system_tokens: int  # of the system text and the tool definitions (before the chat template)
    turns: int  # requests per session
    shape: dict[str, Any] = field(default_factory=dict)


class _Counter:
    def __init__(self, model_dir: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def __call__(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def _prose(rng: random.Random, words: int) -> str:
    sentences = []
    while words > 0:
        n = min(words, rng.randint(8, 20))
        sentences.append(" ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + ".")
        words -= n
    return " ".join(sentences)


def _code_line(rng: random.Random) -> str:
    name = f"{rng.choice(_IDENTS)}_{rng.choice(_WORDS)}"
    kind = rng.randrange(4)
    if kind == 0:
        return f"def {name}({rng.choice(_WORDS)}, {rng.choice(_WORDS)}={rng.randint(0, 999)}):"
    if kind == 1:
        return f"    {rng.choice(_WORDS)} = {name}({rng.choice(_WORDS)}) + {rng.randint(0, 99)}"
    if kind == 2:
        return f"    # {_prose(rng, rng.randint(5, 12))}"
    return f"    return {rng.choice(_WORDS)}.{name}()"


def _sized(rng: random.Random, count: _Counter, tokens: int, make_line: Any) -> tuple[str, int]:
    """Lines from ``make_line`` until the text is about ``tokens`` long (counted line by line;
    the exact count of the whole text is returned with it)."""
    lines: list[str] = []
    have = 0
    while have < tokens:
        line = make_line(rng)
        lines.append(line)
        have += count(line + "\n")
    text = "\n".join(lines)
    return text, count(text)


def _tools(rng: random.Random, count: _Counter, tokens: int) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    while count(json.dumps(tools)) < tokens:
        name = _TOOL_NAMES[len(tools) % len(_TOOL_NAMES)] + ("" if len(tools) < len(_TOOL_NAMES) else f"_{len(tools)}")
        properties = {
            f"{rng.choice(_WORDS)}_{i}": {"type": rng.choice(["string", "integer", "boolean"]),
                                          "description": _prose(rng, rng.randint(6, 18))}
            for i in range(rng.randint(2, 5))
        }
        tools.append({"type": "function", "function": {
            "name": name, "description": _prose(rng, rng.randint(15, 45)),
            "parameters": {"type": "object", "properties": properties, "required": list(properties)[:1]},
        }})
    return tools


def build(
    model_dir: Path,
    *,
    system_tokens: int,
    turns: int,
    result_tokens: tuple[int, int],
    sessions: int,
    salt: str = "",
) -> Workload:
    """``sessions`` sessions of ``turns`` requests sharing one system prompt of about
    ``system_tokens`` tokens (a quarter of it tool definitions); ``salt`` makes another system
    prompt of the same shape (a phase of the benchmark that must not find an earlier one's)."""
    count = _Counter(model_dir)
    rng = random.Random(f"system:{salt}")
    tools = _tools(rng, count, system_tokens // 4)
    tool_tokens = count(json.dumps(tools))
    system, text_tokens = _sized(rng, count, system_tokens - tool_tokens, lambda r: _prose(r, r.randint(20, 60)))
    low, high = result_tokens
    made = []
    for seed in range(sessions):
        srng = random.Random(f"session:{salt}:{seed}")
        user = f"Session {seed}: " + _prose(srng, 40)
        sizes = [srng.randint(low, high) for _ in range(turns - 1)]
        if len(sizes) >= 2:
            sizes[-1] = sizes[0]  # turn 2 and the last turn get the same amount of new text
        steps = []
        for i, size in enumerate(sizes):
            tool = tools[srng.randrange(len(tools))]["function"]
            arguments = {key: _prose(srng, 3) for key in list(tool["parameters"]["properties"])[:2]}
            result, result_count = _sized(srng, count, size, _code_line)
            steps.append(Turn(f"call_{seed}_{i:03d}", tool["name"], arguments, result, result_count))
        made.append(Session(seed, user, steps))
    shape = {
        "system_tokens": text_tokens + tool_tokens, "tool_tokens": tool_tokens, "tools": len(tools),
        "turns": turns, "result_tokens": [low, high], "sessions": sessions,
    }
    return Workload(system, tools, made, text_tokens + tool_tokens, turns, shape)
