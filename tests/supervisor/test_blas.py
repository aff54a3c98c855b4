"""The BLAS library workers preload (``[supervisor] preload_blas``): which one, and that workers
(warm spares included) get it and nothing else does. A library every Linux has (libm) stands in
for OpenBLAS, so the test runs the same on a machine without OpenBLAS."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from opta_lmx.config import parse_config
from opta_lmx.errors import ConfigError
from opta_lmx.supervisor.blas import preload_library, worker_environment
from tests.conftest import model_config


def loaded_path(soname_start: str) -> str:
    """The file of a library this process has mapped (libm: the interpreter needs it)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if Path(path).name.startswith(soname_start):
            return path
    raise AssertionError(f"{soname_start} not mapped")


@pytest.mark.parametrize(
    ("setting", "found", "platform", "wanted"),
    [
        ("auto", "libopenblas.so.0", "linux", "libopenblas.so.0"),
        ("auto", None, "linux", None),  # no OpenBLAS: nothing changes
        ("auto", "libopenblas.so.0", "darwin", None),  # Accelerate there; LD_PRELOAD means nothing
        ("off", "libopenblas.so.0", "linux", None),
        ("", "libopenblas.so.0", "linux", None),
        ("/opt/blas/libopenblas.so", None, "linux", "/opt/blas/libopenblas.so"),
    ],
)
def test_which_library(setting: str, found: str | None, platform: str, wanted: str | None) -> None:
    assert preload_library(setting, find=lambda name: found if name == "openblas" else None, platform=platform) == wanted


def test_the_library_goes_first_in_ld_preload(monkeypatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    assert worker_environment("libopenblas.so.0")["LD_PRELOAD"] == "libopenblas.so.0:libother.so"
    assert worker_environment(None) is None


def test_a_missing_library_is_refused_at_config_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preload_blas"):
        parse_config(f'[supervisor]\npreload_blas = "{tmp_path / "nope.so"}"\n')
    assert parse_config('[supervisor]\npreload_blas = "off"\n').supervisor.preload_blas == "off"


def test_workers_and_spares_preload_it_the_gateway_does_not(make_server, tiny_model: Path) -> None:
    library = loaded_path("libm.so")
    server = make_server(f'[supervisor]\npreload_blas = "{library}"\n' + model_config({"tiny": tiny_model}))
    server.wait_models()
    spare = server.wait_spare()
    reply = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    for pid in (server.worker_pid("tiny"), spare):
        assert psutil.Process(pid).environ()["LD_PRELOAD"].split(":")[0] == library
    gateway = psutil.Process(server.gateway_pid()).environ()
    assert library not in gateway.get("LD_PRELOAD", "")
