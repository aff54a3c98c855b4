"""Remove a model from disk, refused while a running server has it loaded."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from opta_lmx.errors import ModelInUse, ModelStoreError
from opta_lmx.store.inventory import LocalModel

# Which of these paths a running server has loaded (its model names, for the message).
LoadedCheck = Callable[[LocalModel], list[str]]


def remove_model(model: LocalModel, loaded: LoadedCheck, hf_cache: Path | None = None) -> None:
    """Delete ``model``'s files.

    ``ModelInUse`` while ``loaded(model)`` names a loaded model; ``ModelStoreError`` for a
    configured model (the config file names it: remove it there first).
    """
    if model.source == "config":
        raise ModelStoreError(
            f"{model.name!r} is a configured model ({model.path}); remove it from the config file, "
            "then delete its files yourself"
        )
    if names := loaded(model):
        raise ModelInUse(
            f"{model.name!r} is loaded (as {', '.join(names)}); unload it first: lmxctl stop {names[0]}"
        )
    if model.source == "hf-cache" and hf_cache is not None:
        _remove_from_hf_cache(model, hf_cache)
        return
    if model.path.is_dir():
        shutil.rmtree(model.path)
    else:
        for part in _gguf_parts(model.path):
            part.unlink(missing_ok=True)
    _remove_empty_parents(model.path.parent, model.root)


def _remove_from_hf_cache(model: LocalModel, hf_cache: Path) -> None:
    """Every cached revision of the repository, through huggingface_hub's own cache deletion."""
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hf_cache)
    repo = next((r for r in info.repos if r.repo_type == "model" and model.path.is_relative_to(r.repo_path)), None)
    if repo is None:
        raise ModelStoreError(f"{model.path} is not in the Hugging Face cache {hf_cache}")
    info.delete_revisions(*(r.commit_hash for r in repo.revisions)).execute()
    shutil.rmtree(repo.repo_path, ignore_errors=True)


def _gguf_parts(path: Path) -> list[Path]:
    """A split GGUF's parts (``name-00001-of-00003.gguf``...), or the file alone."""
    stem, _, rest = path.name.rpartition("-00001-of-")
    if stem and rest.endswith(".gguf"):
        return sorted(path.parent.glob(f"{stem}-*-of-{rest}"))
    return [path]


def _remove_empty_parents(folder: Path, root: Path | None) -> None:
    """The folders left empty (``publisher/`` of ``publisher/model``), up to the store's root."""
    while root is not None and folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
