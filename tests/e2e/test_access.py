"""API keys, the Host check (DNS rebinding) and the web-origin check, against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from opta_lmx.config import ServerConfig, exposure_error

KEY = "sk-local-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def keyed(make_server, tiny_model: Path):  # type: ignore[no-untyped-def]
    server = make_server(
        f'[server]\napi_keys = ["{KEY}", "sk-second"]\nallowed_hosts = ["lmx.home.arpa"]\n'
        f'cors_origins = ["https://ui.example"]\n[[models]]\nname = "tiny"\npath = "{tiny_model}"\n'
    )
    server.wait_models()
    return server


def test_api_keys_guard_every_dialect(keyed) -> None:  # type: ignore[no-untyped-def]
    good = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key=KEY, max_retries=0)
    assert good.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2).choices
    second = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="sk-second", max_retries=0)
    assert second.models.list().data
    bad = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    claude = anthropic.Anthropic(base_url=keyed.base_url, api_key=KEY, max_retries=0)
    assert claude.messages.create(model="tiny", max_tokens=2, messages=MESSAGES).content
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic.Anthropic(base_url=keyed.base_url, api_key="sk-wrong", max_retries=0).messages.create(
            model="tiny", max_tokens=2, messages=MESSAGES
        )
    assert refused.value.body["error"]["type"] == "authentication_error"
    no_key = httpx.post(f"{keyed.base_url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{keyed.base_url}/health").status_code == 200  # liveness stays open
    assert KEY not in keyed.log() and "sk-wrong" not in keyed.log()


def test_only_local_and_allowed_host_names_are_answered(keyed) -> None:  # type: ignore[no-untyped-def]
    headers = {"authorization": f"Bearer {KEY}"}
    url = f"{keyed.base_url}/v1/models"
    for host in (f"127.0.0.1:{keyed.port}", f"localhost:{keyed.port}", "lmx.home.arpa", f"[::1]:{keyed.port}", "10.0.0.5"):
        assert httpx.get(url, headers={**headers, "host": host}).status_code == 200, host
    rebound = httpx.get(url, headers={**headers, "host": f"attacker.example:{keyed.port}"})
    assert rebound.status_code == 403 and "allowed_hosts" in rebound.json()["error"]["message"]


def test_browser_requests_from_other_origins_are_refused(keyed) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 2}
    url = f"{keyed.base_url}/v1/chat/completions"
    headers = {"authorization": f"Bearer {KEY}"}
    # A form post from another site needs no preflight; it must not run.
    evil = httpx.post(url, json=body, headers={**headers, "origin": "https://evil.example"})
    assert evil.status_code == 403 and "cors_origins" in evil.json()["error"]["message"]
    preflight = httpx.options(
        url,
        headers={"origin": "https://ui.example", "access-control-request-method": "POST", "access-control-request-headers": "authorization"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
    allowed = httpx.post(url, json=body, headers={**headers, "origin": "https://ui.example"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://ui.example"


def test_listening_beyond_loopback_needs_keys_or_a_deliberate_setting(tmp_path: Path) -> None:
    assert exposure_error(ServerConfig()) is None
    assert exposure_error(ServerConfig(host="::1")) is None
    assert exposure_error(ServerConfig(host="0.0.0.0", api_keys=["k"])) is None
    assert exposure_error(ServerConfig(host="0.0.0.0", allow_unauthenticated_remote=True)) is None
    problem = exposure_error(ServerConfig(host="0.0.0.0"))
    assert problem and "api_keys" in problem and "allow_unauthenticated_remote" in problem
    config = tmp_path / "open.toml"
    config.write_text('[[models]]\nname = "m"\npath = "/nowhere"\n')
    done = subprocess.run(
        [sys.executable, "-m", "opta_lmx", "serve", "--config", str(config), "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "allow_unauthenticated_remote" in done.stderr
