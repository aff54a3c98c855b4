"""The inventory over a data dir, a Hugging Face cache and an LM Studio-style folder, laid out the
way each tool writes them, with real model files (the tiny demo model, synthetic GGUFs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model

from opta_lmx.config import Config, ModelConfig, parse_config, with_local_models
from opta_lmx.errors import LocalModelNotFound
from opta_lmx.store.gguf_file import read_gguf
from opta_lmx.store.inventory import StoreRoots, find, local_model_configs, scan
from tests.support.gguf_models import Q, write_gguf
from tests.support.hf_cache import hf_cache_repo

@pytest.fixture
def store(tmp_path: Path, tiny_model: Path) -> StoreRoots:
    models = tmp_path / "data" / "models"
    shutil.copytree(tiny_model, models / "mine")
    shutil.copytree(tiny_model, models / "org" / "pulled")
    write_gguf(models / "solo.gguf", "qwen3", tiny_model, Q.Q8_0)
    (models / ".staging-half-abc").mkdir()  # an import in progress
    shutil.copytree(tiny_model, models / ".partial" / "org--coming")  # a pull in progress
    broken = models / "org" / "sharded"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    cache = tmp_path / "hf"
    hf_cache_repo(cache, "mlx-community/tiny-4bit", {n: tiny_model / n for n in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")})
    lmstudio = tmp_path / "lmstudio"
    write_gguf(lmstudio / "publisher" / "model-GGUF" / "model-Q8_0.gguf", "llama", tiny_model, Q.Q8_0)
    write_gguf(lmstudio / "publisher" / "two" / "two-Q4_0.gguf", "gemma3", tiny_model, Q.Q4_0)
    write_gguf(lmstudio / "publisher" / "two" / "two-F32.gguf", "gemma3", tiny_model)
    (lmstudio / "publisher" / "two" / "mmproj-two-F16.gguf").write_bytes(b"GGUF")
    return StoreRoots(models, cache, (lmstudio,))


def test_every_source_is_scanned_and_described(store: StoreRoots) -> None:
    models = {m.name: m for m in scan(store)}
    assert sorted(models) == [
        "mine", "mlx-community/tiny-4bit", "org/pulled", "publisher/model-GGUF",
        "publisher/two/two-F32", "publisher/two/two-Q4_0", "solo",
    ]
    tiny = models["mine"]
    assert (tiny.format, tiny.source, tiny.architecture, tiny.context_length) == ("mlx", "data", "llama", 2048)
    assert tiny.quantization == "float32"
    assert tiny.size == (tiny.path / "model.safetensors").stat().st_size
    assert tiny.parameters == sum(p.size for _, p in tree_flatten(load_model(tiny.path)[0].parameters()))
    solo = models["solo"]
    assert (solo.format, solo.architecture, solo.quantization, solo.context_length) == ("gguf", "qwen3", "Q8_0", 256)
    assert solo.parameters == sum(t.n_elements for t in read_gguf(solo.path).tensors)
    assert models["mlx-community/tiny-4bit"].source == "hf-cache"
    assert models["publisher/model-GGUF"].path.name == "model-Q8_0.gguf"
    assert models["publisher/two/two-Q4_0"].quantization == "Q4_0"


def test_configured_models_win_names_and_paths(store: StoreRoots) -> None:
    configured = [ModelConfig(name="org/pulled", path=str(store.models_dir / "mine"))]
    models = scan(store, configured)
    names = [m.name for m in models]
    assert names.count("org/pulled") == 1 and "mine" not in names  # same path as the configured one
    assert find(models, "org/pulled").source == "config"
    with pytest.raises(LocalModelNotFound, match="no local model named 'nope'"):
        find(models, "nope")


def test_local_models_join_the_config_unless_configured(store: StoreRoots) -> None:
    config = parse_config(f'[[models]]\nname = "solo"\npath = "{store.models_dir / "mine"}"\naliases = ["org/pulled"]\n')
    merged = with_local_models(config, local_model_configs(store))
    names = [m.name for m in merged.models]
    assert names[0] == "solo" and names.count("solo") == 1
    assert "org/pulled" not in names  # an alias of a configured model
    assert "mine" not in names  # the configured model's path
    lazy = merged.model("mlx-community/tiny-4bit")
    assert lazy is not None and lazy.load_on_start is False


def test_store_settings_choose_the_folders(tmp_path: Path) -> None:
    config = parse_config('[store]\nhf_cache = false\ndirs = ["~/models"]\n')
    roots = StoreRoots.of(config, tmp_path, tmp_path / "hf")
    assert roots.hf_cache is None and roots.dirs == (Path("~/models").expanduser(),)
    assert roots.models_dir == tmp_path / "models"
    default = StoreRoots.of(Config(), tmp_path, tmp_path / "hf")
    assert default.hf_cache == tmp_path / "hf" and Path("~/.lmstudio/models").expanduser() in default.dirs
