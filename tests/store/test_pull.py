"""Pulls from a stand-in hub on 127.0.0.1 serving real model files: what is fetched, resume after
a cut transfer or a cancel, a corrupt file refused, a missing repository."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opta_lmx.errors import DownloadError, ModelStoreError
from opta_lmx.store.inventory import StoreRoots, scan
from opta_lmx.store.pull import PARTIAL_DIR, Pull, PullCancelled, PullStatus, RemoteFile, gguf_quant, parse_spec, select_files
from tests.conftest import free_port
from tests.support.hub import HubServer, StandInHub

GGUF_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
MB = 1 << 20


@pytest.fixture
def hub(tiny_model: Path, smollm2_gguf: Path) -> StandInHub:
    hub = StandInHub()
    hub.add_directory("org/tiny", tiny_model)
    hub.repos["org/tiny"]["README.md"] = hub.repos["org/tiny"]["config.json"]  # not a model file
    hub.repos["org/tiny"]["modeling_tiny.py"] = hub.repos["org/tiny"]["config.json"]  # code is never fetched
    hub.add_repo(GGUF_REPO, {smollm2_gguf.name: smollm2_gguf.read_bytes()})
    return hub


def test_pull_fetches_the_model_files_into_the_data_dir(tmp_path: Path, hub: StandInHub) -> None:
    seen: list[PullStatus] = []
    with HubServer(hub) as server:
        path = Pull("org/tiny", tmp_path / "models", endpoint=server.url, on_progress=seen.append).run()
    assert path == tmp_path / "models" / "org" / "tiny"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert not (tmp_path / "models" / PARTIAL_DIR).exists()
    assert seen[-1].state == "done" and seen[-1].done_bytes == seen[-1].total_bytes > 0
    assert any(s.state == "downloading" and 0 < s.done_bytes < s.total_bytes for s in seen)
    [model] = scan(StoreRoots(tmp_path / "models", None))
    assert (model.name, model.format) == ("org/tiny", "mlx")


def test_a_cut_transfer_resumes_where_it_stopped(tmp_path: Path, hub: StandInHub, smollm2_gguf: Path) -> None:
    # huggingface_hub writes what it received in 10 MiB chunks: cut past two of them.
    hub.cut_once[smollm2_gguf.name] = 25 * MB
    with HubServer(hub) as server:
        path = Pull(GGUF_REPO, tmp_path / "models", endpoint=server.url).run()
    assert path.read_bytes() == smollm2_gguf.read_bytes()
    assert hub.ranges(smollm2_gguf.name) == ["", f"bytes={20 * MB}-"]


def test_a_cancelled_pull_leaves_a_partial_that_the_next_pull_continues(tmp_path: Path, hub: StandInHub, smollm2_gguf: Path) -> None:
    models = tmp_path / "models"
    with HubServer(hub) as server:
        def cancel_midway(status: PullStatus) -> None:
            if status.done_bytes > 20 * MB:
                pull.cancel()  # as another thread (an API's cancel request) would

        pull = Pull(GGUF_REPO, models, endpoint=server.url, on_progress=cancel_midway)
        with pytest.raises(PullCancelled, match="partial download .* is kept"):
            pull.run()
        assert pull.status.state == "cancelled"
        assert not (models / GGUF_REPO).exists()  # nothing that looks like a model
        assert scan(StoreRoots(models, None)) == []
        [incomplete] = list(pull.partial_dir.rglob("*.part"))
        kept = incomplete.stat().st_size
        assert kept >= 10 * MB
        path = Pull(GGUF_REPO, models, endpoint=server.url).run()
    assert path.read_bytes() == smollm2_gguf.read_bytes()
    assert hub.ranges(smollm2_gguf.name)[-1] == f"bytes={kept}-"


def test_a_corrupt_file_is_refused_and_deleted(tmp_path: Path, hub: StandInHub) -> None:
    hub.corrupt.add("model.safetensors")
    with HubServer(hub) as server:
        pull = Pull("org/tiny", tmp_path / "models", endpoint=server.url)
        with pytest.raises(DownloadError, match="model.safetensors: corrupt download .*sha256"):
            pull.run()
        assert not (tmp_path / "models" / "org" / "tiny").exists()
        assert not (pull.partial_dir / "model.safetensors").exists()
        hub.corrupt.clear()
        Pull("org/tiny", tmp_path / "models", endpoint=server.url).run()  # fetched again, whole
    assert (tmp_path / "models" / "org" / "tiny" / "model.safetensors").exists()


def test_missing_repository_revision_and_hub(tmp_path: Path, hub: StandInHub) -> None:
    with HubServer(hub) as server:
        with pytest.raises(DownloadError, match="repository org/nothing not found") as missing:
            Pull("org/nothing", tmp_path, endpoint=server.url).run()
        assert missing.value.status == 404
        with pytest.raises(DownloadError, match="choose one with --quant|no safetensors"):
            hub.add_repo("org/empty", {"README.md": b"hello"})
            Pull("org/empty", tmp_path, endpoint=server.url).run()
    with pytest.raises(DownloadError, match="network failure talking to http://127.0.0.1"):
        Pull("org/tiny", tmp_path, endpoint=f"http://127.0.0.1:{free_port()}").run()  # nothing listens
    with pytest.raises(ModelStoreError, match="not a repository name"):
        parse_spec("../etc")
    assert parse_spec("org/name@v1.0") == ("org/name", "v1.0")


def test_one_gguf_quantization_is_chosen() -> None:
    files = [RemoteFile(name, 1, None, "x") for name in (
        "m-Q4_K_M.gguf", "m-Q8_0.gguf", "m-F16-00001-of-00002.gguf", "m-F16-00002-of-00002.gguf", "mmproj-m-F16.gguf", "README.md",
    )]
    assert [f.path for f in select_files(files, None, "o/m")[0]] == ["m-Q4_K_M.gguf"]
    assert [f.path for f in select_files(files, "q8_0", "o/m")[0]] == ["m-Q8_0.gguf"]
    assert [f.path for f in select_files(files, "F16", "o/m")[0]] == ["m-F16-00001-of-00002.gguf", "m-F16-00002-of-00002.gguf"]
    with pytest.raises(DownloadError, match="no Q2_K file .*available: F16, Q4_K_M, Q8_0"):
        select_files(files, "Q2_K", "o/m")
    with pytest.raises(DownloadError, match="choose one with --quant"):
        select_files(files[1:], None, "o/m")
    assert gguf_quant("SmolLM2-135M-Instruct.Q4_1.gguf") == "Q4_1"
    assert gguf_quant("gemma-3-270m-q4_k_m.gguf") == "Q4_K_M"


def test_ctrl_c_on_the_command_line_keeps_a_resumable_partial(tmp_path: Path, hub: StandInHub, smollm2_gguf: Path) -> None:
    hub.delay = 0.002  # about 30 MB/s: Ctrl-C lands in the middle
    env = {**os.environ, "OPTA_LMX_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hf")}
    partial = tmp_path / "models" / PARTIAL_DIR
    with HubServer(hub) as server:
        env["HF_ENDPOINT"] = server.url
        command = [sys.executable, "-m", "opta_lmx", "pull", GGUF_REPO]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size >= 10 * MB for p in partial.rglob("*.part")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "is kept, pull again to continue" in err and "Traceback" not in err
        assert not (tmp_path / "models" / GGUF_REPO).exists()
        hub.delay = 0
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "models" / GGUF_REPO / smollm2_gguf.name).read_bytes() == smollm2_gguf.read_bytes()
    assert hub.ranges(smollm2_gguf.name)[-1].startswith("bytes=") and hub.ranges(smollm2_gguf.name)[-1] != "bytes=0-"


def test_a_full_disk_stops_the_pull_with_the_reason(tmp_path: Path, hub: StandInHub, smollm2_gguf: Path) -> None:
    # A file size limit makes the kernel refuse writes past 15 MiB, as a full disk refuses them.
    def limit_file_size() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (15 * MB, 15 * MB))

    env = {**os.environ, "OPTA_LMX_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hf")}
    with HubServer(hub) as server:
        env["HF_ENDPOINT"] = server.url
        result = subprocess.run(
            [sys.executable, "-m", "opta_lmx", "pull", GGUF_REPO], env=env, capture_output=True, text=True,
            preexec_fn=limit_file_size, timeout=120,
        )
    assert result.returncode == 1
    assert "cannot write: File too large" in result.stderr and "is kept" in result.stderr
    assert not (tmp_path / "models" / GGUF_REPO).exists()
