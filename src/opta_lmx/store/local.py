"""The store as a running server uses it: the supervisor finds the models on disk, pulls new ones
and removes old ones through ``LocalStore``. Nothing here imports mlx or numpy (the supervisor
never does): the inventory reads headers, a pull moves bytes, a removal deletes files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from opta_lmx.config import Config, ModelConfig
from opta_lmx.store.inventory import LocalModel, StoreRoots, find, local_model_configs, scan
from opta_lmx.store.pull import Pull, PullStatus
from opta_lmx.store.remove import remove_model


class LocalStore:
    """The data directory's models (``<data_dir>/models``), the Hugging Face cache at
    ``hf_cache`` and the folders a config names; pulls from ``endpoint`` (None: $HF_ENDPOINT,
    else the Hugging Face hub)."""

    def __init__(self, data_dir: Path, hf_cache: Path, endpoint: str | None = None) -> None:
        self.data_dir = data_dir
        self.hf_cache = hf_cache
        self.endpoint = endpoint

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    def roots(self, config: Config) -> StoreRoots:
        return StoreRoots.of(config, self.data_dir, self.hf_cache)

    def local_models(self, config: Config) -> list[ModelConfig]:
        """The models on disk as config entries to serve by name (configured ones not merged in)."""
        return local_model_configs(self.roots(config))

    def find(self, config: Config, name: str) -> LocalModel:
        """The model on disk named ``name``, configured ones included (``LocalModelNotFound``)."""
        return find(scan(self.roots(config), config.models), name)

    def remove(self, model: LocalModel, loaded: list[str]) -> None:
        """Delete ``model``'s files; ``ModelInUse`` if ``loaded`` names a model serving them,
        ``ModelStoreError`` for a configured model."""
        remove_model(model, lambda _: loaded, self.hf_cache)

    def pull(self, spec: str, quant: str | None, on_progress: Callable[[PullStatus], None]) -> Pull:
        """A pull of ``spec`` (``ORG/NAME[@REVISION]``) into the data directory, not started
        (``Pull.run``); ``ModelStoreError`` if ``spec`` is not a repository name."""
        return Pull(spec, self.models_dir, quant, self.endpoint, on_progress)
