from pathlib import Path

import pytest

from opta_lmx.config import DEMO_MODEL_NAME, load_config, parse_config, with_demo_model
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


def test_example_config_in_etc_is_valid() -> None:
    config = load_config(Path(__file__).parents[1] / "etc" / "opta-lmx.toml")
    assert config.server.port == 1234
