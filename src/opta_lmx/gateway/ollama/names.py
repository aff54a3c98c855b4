"""Ollama's model names as this server reads them.

A configured name or alias, optionally with ``:latest`` (Ollama's default tag, which clients
add); and the Hugging Face names Ollama pulls, ``hf.co/ORG/REPO[:QUANT]`` (also
``huggingface.co/...``), which name the model a pull of that repository put on disk:
``ORG/REPO``, or, when the repository's folder holds several GGUF quantizations,
``ORG/REPO/<file stem>`` for the one whose file name states QUANT.
"""

from __future__ import annotations

import re

from opta_lmx.config import Config

LATEST = "latest"
_HF = re.compile(r"^(?:https?://)?(?:hf\.co|huggingface\.co)/(?P<repo>[^/:\s]+/[^/:\s]+)(?::(?P<tag>[^/:\s]+))?$", re.I)


def hugging_face_repo(name: str) -> tuple[str, str | None] | None:
    """``(ORG/REPO, quantization)`` for a Hugging Face name (no tag, or ``latest``: None),
    None for any other name."""
    match = _HF.match(name.strip())
    if match is None:
        return None
    tag = match.group("tag")
    return match.group("repo"), (None if tag is None or tag.lower() == LATEST else tag)


def candidates(name: str, config: Config) -> list[str]:
    """The names ``name`` may stand for, most specific first."""
    found = [name]
    if name.endswith(f":{LATEST}"):
        found.append(name.removesuffix(f":{LATEST}"))
    if (hf := hugging_face_repo(name)) is not None:
        repo, quant = hf
        if quant is not None:
            stated = re.compile(rf"(?:^|[-_.]){re.escape(quant)}(?:-\d{{5}}-of-\d{{5}})?$", re.I)
            found += [
                m.name for m in config.models if m.name.startswith(f"{repo}/") and stated.search(m.name.rsplit("/", 1)[1])
            ]
        found.append(repo)
    return found


def served_name(name: str, config: Config) -> str | None:
    """The configured or local model ``name`` names (its own name, not an alias), if any."""
    for candidate in candidates(name, config):
        model = config.model(candidate)
        if model is not None:
            return model.name
    return None
