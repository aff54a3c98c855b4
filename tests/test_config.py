import re
from pathlib import Path

import msgspec
import pytest

from opta_lmx.config import (
    DEMO_MODEL_NAME,
    Config,
    EngineOptions,
    MemoryConfig,
    ModelConfig,
    Preset,
    ServerConfig,
    StoreConfig,
    SupervisorConfig,
    load_config,
    parse_config,
    with_demo_model,
)
from opta_lmx.errors import ConfigError


def test_full_config_decodes() -> None:
    config = parse_config(
        """
        [server]
        host = "0.0.0.0"
        port = 8080
        [supervisor]
        load_timeout = 10
        [[models]]
        name = "a"
        path = "/models/a"
        [[models]]
        name = "org/b:q4"
        path = "org/b"
        """
    )
    assert config.server.port == 8080 and config.server.host == "0.0.0.0"
    assert config.supervisor.load_timeout == 10
    assert [m.name for m in config.models] == ["a", "org/b:q4"]
    assert config.model("a") is not None and config.model("c") is None


def test_defaults_listen_like_lm_studio() -> None:
    config = parse_config("")
    assert (config.server.host, config.server.port) == ("127.0.0.1", 1234)
    assert config.models == []


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nprot = 1", "`prot`"),
        ("[server]\nport = 'x'", "$.server.port"),
        ("surprise = 1", "`surprise`"),
        ("[[models]]\nname = 'a'\npath = 'p'\ncolour = 'red'", "`colour`"),
        ("[[models]]\nname = 'a'", "`path`"),
        ("[[models]]\nname='a'\npath='p'\n[[models]]\nname='a'\npath='q'", "listed twice"),
        ("[[models]]\nname='bad#name'\npath='p'", "bad#name"),
        ("[server]\nport = 70000", "port"),
        ("[store]\nhf_cahce = true", "hf_cahce"),
        ("[store]\ndirs = 'one'", "dirs"),
        ("[server\nport = 1", "TOML"),
    ],
)
def test_bad_config_is_refused_naming_the_problem(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_config(text, "test.toml")
    assert named in str(info.value)
    assert str(info.value).startswith("test.toml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")


def test_demo_model_is_added_when_none_configured(tmp_path: Path) -> None:
    config = with_demo_model(parse_config(""), tmp_path)
    assert [(m.name, m.path) for m in config.models] == [(DEMO_MODEL_NAME, str(tmp_path))]


EXAMPLE = Path(__file__).parents[1] / "etc" / "opta-lmx.toml"


def test_example_config_in_etc_is_valid_and_states_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.server == ServerConfig()
    assert config.supervisor == SupervisorConfig()
    assert config.memory == MemoryConfig()
    assert config.store == StoreConfig()


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for struct in (Config, ServerConfig, SupervisorConfig, MemoryConfig, StoreConfig, Preset, ModelConfig, EngineOptions):
        for field in msgspec.structs.fields(struct):
            assert re.search(rf"^#? ?(# )?{field.name} = |^\[{field.name}\]|\[{field.name}\.|\[\[{field.name}\]\]|\.{field.name}\]", text, re.M), field.name


def test_the_uncommented_example_model_and_preset_are_valid() -> None:
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# [presets."))
    body = "\n".join(re.sub(r"^# ?", "", line) for line in lines[start:] if line.startswith("# ") and "=" in line or line.startswith("# [") )
    config = parse_config(body)
    assert config.models[0].aliases == ["gpt-4o-mini"] and config.models[0].preset == "precise"
    assert config.models[0].options == EngineOptions()
    assert config.model("gpt-4o-mini") is config.models[0]


def test_presets_and_aliases_are_checked() -> None:
    with pytest.raises(ConfigError, match="no \\[presets.nope\\]"):
        parse_config("[[models]]\nname='a'\npath='p'\npreset='nope'")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config("[[models]]\nname='a'\npath='p'\n[[models]]\nname='b'\npath='q'\naliases=['a']")
    with pytest.raises(ConfigError, match="options must be positive"):
        parse_config("[[models]]\nname='a'\npath='p'\n[models.options]\nbatch_size=0")
    with pytest.raises(ConfigError, match="options must be positive"):
        parse_config("[[models]]\nname='a'\npath='p'\n[models.options]\nprompt_cache_bytes=-1")
    options = parse_config("[[models]]\nname='a'\npath='p'\n[models.options]\nprompt_cache_entries=0").models[0].options
    assert options.prompt_cache_entries == 0  # 0 is allowed: it disables the prompt cache


def test_kv_quantization_and_draft_options_are_checked() -> None:
    model = "[[models]]\nname='a'\npath='p'\n[models.options]\n"
    with pytest.raises(ConfigError, match="kv_bits"):
        parse_config(model + "kv_bits=7")
    with pytest.raises(ConfigError, match="kv_group_size"):
        parse_config(model + "kv_bits=4\nkv_group_size=16")
    with pytest.raises(ConfigError, match="options must be positive"):
        parse_config(model + "draft_model='d'\nnum_draft_tokens=0")
    with pytest.raises(ConfigError, match="rotating"):
        parse_config(model + "kv_bits=8\nmax_kv_size=1024")
    assert not parse_config(model).models[0].options.sequential
    assert parse_config(model + "kv_bits=4").models[0].options.sequential
    assert parse_config(model + "draft_model='small'").models[0].options.sequential
    with pytest.raises(ConfigError, match="engine 'torch'"):
        parse_config("[[models]]\nname='a'\npath='p'\nengine='torch'")


def test_options_of_the_other_engine_are_refused(tmp_path: Path) -> None:
    gguf_dir = tmp_path / "g"
    gguf_dir.mkdir()
    (gguf_dir / "m.gguf").write_bytes(b"GGUF")
    mlx = "[[models]]\nname='a'\npath='p'\n[models.options]\n"
    gguf = f"[[models]]\nname='a'\npath='{gguf_dir / 'm.gguf'}'\n[models.options]\n"
    with pytest.raises(ConfigError, match="slots applies to GGUF"):
        parse_config(mlx + "slots=2")
    with pytest.raises(ConfigError, match="flash_attn applies to GGUF"):
        parse_config(mlx + "flash_attn='on'")
    with pytest.raises(ConfigError, match="batch_size applies to MLX models, MLX embedding models and GGUF embedding models only; kv_bits applies to MLX"):
        parse_config(gguf + "batch_size=4\nkv_bits=8")
    with pytest.raises(ConfigError, match="kv_disk_bytes applies to MLX models only"):  # the disk tier is the MLX engine's
        parse_config(gguf + "kv_disk_bytes=0")
    assert parse_config(mlx + "kv_disk_bytes=0").models[0].options.kv_disk_bytes == 0
    # A directory holding a GGUF is a GGUF model too, and "gguf" named outright.
    with pytest.raises(ConfigError, match="max_kv_size applies to MLX"):
        parse_config(f"[[models]]\nname='a'\npath='{gguf_dir}'\n[models.options]\nmax_kv_size=64")
    with pytest.raises(ConfigError, match="draft_model applies to MLX"):
        parse_config("[[models]]\nname='a'\npath='p'\nengine='gguf'\n[models.options]\ndraft_model='d'")
    options = parse_config(gguf + "slots=4\nslot_context=1024\nthreads=1\nn_batch=256\nn_ubatch=128\nflash_attn='off'\nchat_template='x'\nprompt_cache_entries=0\nstream_interval_ms=0").models[0].options
    assert (options.slots, options.slot_context, options.threads, options.flash_attn) == (4, 1024, 1, "off")
    assert parse_config(mlx + "chat_template='x'\nbatch_size=4").models[0].options.chat_template == "x"  # both engines take it
    # A plug-in engine takes what it takes.
    assert parse_config("[[models]]\nname='a'\npath='p'\nengine='x.y:Z'\n[models.options]\nslots=2").models[0].options.slots == 2
    with pytest.raises(ConfigError, match="slots must be 1-256"):
        parse_config(gguf + "slots=0")
    with pytest.raises(ConfigError, match="n_batch .16. must be at least slots .32."):
        parse_config(gguf + "slots=32\nn_batch=16")
    with pytest.raises(ConfigError, match="flash_attn"):
        parse_config(gguf + "flash_attn='maybe'")
