"""Ollama's options as SamplingParams: honoured, checked, ignored; the preset fills the gaps."""

from __future__ import annotations

import pytest

from opta_lmx.config import Preset
from opta_lmx.errors import UnsupportedParameter
from opta_lmx.gateway.ollama.options import sampling_params
from opta_lmx.gateway.ollama.requests import Options
from opta_lmx.proto import SamplingParams

NONE = Preset()


def test_sampling_options_map_to_the_engines_params() -> None:
    options = Options(
        num_predict=64,
        temperature=0.2,
        top_k=40,
        top_p=0.9,
        min_p=0.05,
        seed=11,
        stop=["END"],
        repeat_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repeat_last_n=-1,
    )
    params = sampling_params(options, NONE, 2048, logprobs=True, top_logprobs=3)
    assert params == SamplingParams(
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        top_k=40,
        min_p=0.05,
        seed=11,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repetition_penalty=1.1,
        logprobs=True,
        top_logprobs=3,
    )


def test_ollamas_special_values() -> None:
    for unlimited in (-1, -2, 0):
        assert sampling_params(Options(num_predict=unlimited), NONE, 0).max_tokens is None
    assert sampling_params(Options(seed=-1), NONE, 0).seed is None  # Ollama's random seed
    assert sampling_params(Options(stop="x"), NONE, 0).stop == ["x"]
    off = sampling_params(Options(repeat_penalty=1.3, presence_penalty=1.0, repeat_last_n=0), NONE, 0)
    assert (off.repetition_penalty, off.presence_penalty) == (1.0, 0.0)  # 0 turns penalties off
    assert sampling_params(None, NONE, 0, top_logprobs=5).top_logprobs == 0  # only with logprobs


def test_the_preset_fills_what_the_request_leaves_out() -> None:
    preset = Preset(temperature=0.3, top_p=0.8, max_tokens=99, stop=["<eot>"])
    params = sampling_params(Options(temperature=0.9), preset, 0)
    assert (params.temperature, params.top_p, params.max_tokens, params.stop) == (0.9, 0.8, 99, ["<eot>"])
    assert sampling_params(None, NONE, 0) == SamplingParams()  # neutral, not Ollama's 0.8/40/0.9


def test_hardware_and_retired_options_change_nothing() -> None:
    ignored = Options(
        num_gpu=99, num_thread=4, num_batch=512, use_mmap=True, num_keep=5, mirostat=2, tfs_z=0.5, numa=True
    )
    assert sampling_params(ignored, NONE, 2048) == SamplingParams()


def test_num_ctx_up_to_the_models_context() -> None:
    assert sampling_params(Options(num_ctx=2048), NONE, 2048) == SamplingParams()
    assert sampling_params(Options(num_ctx=512), NONE, 2048) == SamplingParams()
    with pytest.raises(UnsupportedParameter, match="2048") as info:
        sampling_params(Options(num_ctx=4096), NONE, 2048)
    assert info.value.param == "options.num_ctx"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        (Options(typical_p=0.7), "options.typical_p"),
        (Options(repeat_penalty=1.2, repeat_last_n=64), "options.repeat_last_n"),
        (Options(frequency_penalty=0.5, repeat_last_n=32), "options.repeat_last_n"),
    ],
)
def test_options_that_would_change_the_output_unhonoured_are_refused(options: Options, param: str) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        sampling_params(options, NONE, 2048)
    assert info.value.param == param


def test_neutral_values_of_checked_options_are_accepted() -> None:
    neutral = Options(typical_p=1.0, repeat_last_n=64, repeat_penalty=1.0)  # no penalty: the window is moot
    assert sampling_params(neutral, NONE, 2048) == SamplingParams()
