"""What the supervisor needs of the model store, as protocols: ``store/local.py``'s ``LocalStore``
is the one implementation (the command line passes it in, so that this room imports no store
code; none of it imports mlx or numpy either)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from opta_lmx.config import Config, ModelConfig


class PullProgress(Protocol):
    """A pull's progress (``store.pull.PullStatus``)."""

    state: str  # pending, listing, downloading, done, failed, cancelled
    files: tuple[str, ...]
    current_file: str
    file_done: int
    file_bytes: int
    done_bytes: int
    total_bytes: int
    message: str


class PullHandle(Protocol):
    """One download (``store.pull.Pull``): ``run`` blocks until the model is in place (its path)
    or raises (``DownloadError``, whose ``status`` says why); ``cancel`` from another thread
    stops it at its next network chunk."""

    repo_id: str
    revision: str

    @property
    def status(self) -> PullProgress: ...

    def run(self) -> Path: ...

    def cancel(self) -> None: ...


class LocalModelEntry(Protocol):
    """A model on disk (``store.inventory.LocalModel``)."""

    name: str
    path: Path
    source: str


class ModelStore(Protocol):
    def local_models(self, config: Config) -> list[ModelConfig]:
        """The models on disk as entries to serve by name."""
        ...

    def find(self, config: Config, name: str) -> Any:
        """The ``LocalModelEntry`` named ``name`` (``LocalModelNotFound``)."""
        ...

    def remove(self, model: Any, loaded: list[str]) -> None:
        """Delete the files (``ModelInUse`` when ``loaded`` is not empty, ``ModelStoreError``
        for a configured model)."""
        ...

    def pull(self, spec: str, quant: str | None, on_progress: Callable[[Any], None]) -> PullHandle:
        """A pull, not started (``ModelStoreError`` for a malformed ``spec``)."""
        ...
