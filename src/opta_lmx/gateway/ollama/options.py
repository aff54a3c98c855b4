"""Ollama's ``options`` as the engine's ``SamplingParams``, through the same preset-filled
``jobs.sampling`` every dialect uses.

Three kinds of option (docs/dialects/ollama.md has the table):
- honoured: ``num_predict``, ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``seed``, ``stop``,
  ``repeat_penalty``, ``presence_penalty``, ``frequency_penalty``;
- checked: ``num_ctx`` (refused above the model's context), ``typical_p`` (only 1, which turns it
  off), ``repeat_last_n`` (0 turns the penalties off; with a penalty on, only -1: penalties here
  look at the whole generation);
- ignored: options about how the model runs (``num_gpu``, ``num_thread`` ...), which the engine
  decides, and those Ollama itself no longer reads (``mirostat``, ``tfs_z`` ...).
"""

from __future__ import annotations

from opta_lmx.config import Preset
from opta_lmx.errors import UnsupportedParameter
from opta_lmx.gateway.jobs import sampling
from opta_lmx.gateway.ollama.requests import Options
from opta_lmx.proto import SamplingParams

_NO_OPTIONS = Options()


def sampling_params(
    options: Options | None,
    preset: Preset,
    context: int,
    logprobs: bool = False,
    top_logprobs: int | None = None,
) -> SamplingParams:
    """The request's sampling over its model's preset; ``context`` is the model's context length
    (0 if not known yet: ``num_ctx`` is then not checked)."""
    o = options or _NO_OPTIONS
    _check_num_ctx(o, context)
    _check_typical_p(o)
    penalties_off = o.repeat_last_n == 0
    _check_repeat_last_n(o)
    return sampling(
        preset,
        # Ollama: -1 (and 0) generate until the end, -2 until the context is full: both are "no limit".
        max_tokens=o.num_predict if o.num_predict is not None and o.num_predict > 0 else None,
        temperature=o.temperature,
        top_p=o.top_p,
        stop=[o.stop] if isinstance(o.stop, str) else o.stop,
        top_k=o.top_k,
        min_p=o.min_p,
        seed=o.seed if o.seed is not None and o.seed >= 0 else None,  # Ollama's -1: a random seed
        repetition_penalty=None if penalties_off else o.repeat_penalty,
        presence_penalty=None if penalties_off else o.presence_penalty,
        frequency_penalty=None if penalties_off else o.frequency_penalty,
        logprobs=bool(logprobs),
        top_logprobs=top_logprobs if logprobs else None,
    )


def _check_num_ctx(o: Options, context: int) -> None:
    # A smaller num_ctx is accepted: the model's own context holds every prompt it would hold.
    if o.num_ctx is not None and context and o.num_ctx > context:
        raise UnsupportedParameter(
            f"num_ctx {o.num_ctx} is larger than this model's context length ({context} tokens).",
            param="options.num_ctx",
        )


def _check_typical_p(o: Options) -> None:
    if o.typical_p is not None and o.typical_p != 1.0:
        raise UnsupportedParameter(
            "typical_p is not supported (only 1.0, which turns it off).", param="options.typical_p"
        )


def _penalised(o: Options) -> bool:
    return (o.repeat_penalty not in (None, 1.0)) or bool(o.presence_penalty) or bool(o.frequency_penalty)


def _check_repeat_last_n(o: Options) -> None:
    if o.repeat_last_n in (None, 0, -1) or not _penalised(o):
        return
    raise UnsupportedParameter(
        f"repeat_last_n {o.repeat_last_n} is not supported: penalties here look at the whole generation "
        "(repeat_last_n -1), or are off (0).",
        param="options.repeat_last_n",
    )
