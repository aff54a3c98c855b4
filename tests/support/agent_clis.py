"""The agent CLIs the suite runs against a real server, installed from npm on first use.

Pinned versions: a CLI's requests change from release to release, and the suite must test the
same client every run. They go into ``.cache/agent-clis`` in the checkout (ignored by git), so a
fresh clone's ``pytest`` installs them once, and later runs find them.
"""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path

PACKAGES = {
    "claude": "@anthropic-ai/claude-code@2.1.332",
    "codex": "@openai/codex@0.171.0",
}
PREFIX = Path(__file__).resolve().parents[2] / ".cache" / "agent-clis"
_INSTALL_TIMEOUT = 900.0


def agent_cli(name: str) -> Path:
    """The path of the CLI's executable, installing it (and the others) first if needed."""
    binary = PREFIX / "node_modules" / ".bin" / name
    PREFIX.mkdir(parents=True, exist_ok=True)
    with open(PREFIX / ".lock", "w") as lock:  # pytest-xdist workers or two checkouts' runs
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            subprocess.run(
                ["npm", "install", "--prefix", str(PREFIX), "--no-audit", "--no-fund", *PACKAGES.values()],
                check=True,
                timeout=_INSTALL_TIMEOUT,
                stdout=subprocess.DEVNULL,
            )
    assert binary.exists(), f"npm installed {PACKAGES[name]} but {binary} is missing"
    return binary


if __name__ == "__main__":  # .ci/run installs them before the suite: python -m tests.support.agent_clis
    for name in PACKAGES:
        print(agent_cli(name))
