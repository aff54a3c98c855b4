"""Removing models from each kind of folder, and the refusals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opta_lmx.config import ModelConfig
from opta_lmx.errors import ModelInUse, ModelStoreError
from opta_lmx.store.inventory import StoreRoots, find, scan
from opta_lmx.store.remove import remove_model
from tests.support.gguf_models import write_gguf
from tests.support.hf_cache import hf_cache_repo

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _nothing_loaded(model: object) -> list[str]:
    return []


def test_removes_from_the_data_dir_and_folders(tmp_path: Path, tiny_model: Path) -> None:
    models, lmstudio = tmp_path / "models", tmp_path / "lmstudio"
    shutil.copytree(tiny_model, models / "org" / "tiny")
    shutil.copytree(tiny_model, models / "keep")
    write_gguf(lmstudio / "pub" / "m" / "m-00001-of-00002.gguf", "llama", tiny_model)
    (lmstudio / "pub" / "m" / "m-00002-of-00002.gguf").write_bytes(b"part two")
    roots = StoreRoots(models, None, (lmstudio,))
    remove_model(find(scan(roots), "org/tiny"), _nothing_loaded)
    assert not (models / "org").exists() and (models / "keep").is_dir()  # the empty publisher goes too
    remove_model(find(scan(roots), "pub/m"), _nothing_loaded)
    assert not (lmstudio / "pub").exists() and lmstudio.is_dir()  # every part, up to the root only
    assert [m.name for m in scan(roots)] == ["keep"]


def test_removes_every_revision_from_the_hugging_face_cache(tmp_path: Path, tiny_model: Path) -> None:
    cache = tmp_path / "hf"
    hf_cache_repo(cache, "org/cached", {name: tiny_model / name for name in MODEL_FILES})
    roots = StoreRoots(tmp_path / "models", cache)
    remove_model(find(scan(roots), "org/cached"), _nothing_loaded, cache)
    assert scan(roots) == [] and not (cache / "models--org--cached").exists()


def test_refusals(tmp_path: Path, tiny_model: Path) -> None:
    shutil.copytree(tiny_model, tmp_path / "models" / "busy")
    roots = StoreRoots(tmp_path / "models", None)
    with pytest.raises(ModelInUse, match="'busy' is loaded \\(as busy, alias\\); unload it first: lmxctl stop busy") as busy:
        remove_model(find(scan(roots), "busy"), lambda model: ["busy", "alias"])
    assert busy.value.status == 409 and (tmp_path / "models" / "busy").is_dir()
    configured = [ModelConfig(name="mine", path=str(tiny_model))]
    with pytest.raises(ModelStoreError, match="'mine' is a configured model"):
        remove_model(find(scan(roots, configured), "mine"), _nothing_loaded)
    assert tiny_model.is_dir()


def test_opta_lmx_rm_without_a_server_removes_the_files_itself(tmp_path: Path, tiny_model: Path) -> None:
    shutil.copytree(tiny_model, tmp_path / "models" / "org" / "tiny")
    env = {**os.environ, "OPTA_LMX_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hf")}

    def rm(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "opta_lmx", "rm", name], env=env, capture_output=True, text=True, timeout=60)

    removed = rm("org/tiny")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"removed org/tiny ({tmp_path / 'models' / 'org' / 'tiny'})"
    assert not (tmp_path / "models" / "org").exists()
    missing = rm("org/tiny")
    assert missing.returncode == 1 and "no local model named 'org/tiny'" in missing.stderr
