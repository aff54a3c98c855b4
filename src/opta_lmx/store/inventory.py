"""The models on disk: ``<data_dir>/models`` (pulled and imported), the Hugging Face cache, LM
Studio's folders and the configured paths, each described from its own files.

Read by the supervisor (to serve local models by name) and by ``opta-lmx models``/``rm``: no mlx
here, and nothing is loaded, only headers (``config.json``, safetensors and GGUF headers). A
directory counts as a model only when it is complete (every shard its index names is there), and
staging directories (a pull or an import in progress) are never listed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

from opta_lmx.config import MODEL_NAME_PATTERN, Config, ModelConfig
from opta_lmx.errors import LocalModelNotFound, ModelStoreError
from opta_lmx.store.gguf_file import read_gguf

log = logging.getLogger("opta_lmx.store")

Source = Literal["config", "data", "hf-cache", "dir"]
# The first file of a split GGUF; the other parts are not models of their own.
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-\d{5}$")


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path  # a model directory, or a .gguf file
    format: Literal["mlx", "gguf"]
    source: Source
    architecture: str = "unknown"
    parameters: int | None = None
    size: int = 0
    quantization: str = "unknown"
    context_length: int | None = None
    # The folder it was found in (its data dir, cache or LM Studio folder); None if configured.
    root: Path | None = None

    def model_config(self) -> ModelConfig:
        """How the server serves it: by name, loaded on its first request."""
        return ModelConfig(name=self.name, path=str(self.path), load_on_start=False)


@dataclass(frozen=True)
class StoreRoots:
    models_dir: Path  # <data_dir>/models
    hf_cache: Path | None
    dirs: tuple[Path, ...] = ()

    @classmethod
    def of(cls, config: Config, data_dir: Path, hf_cache: Path | None) -> StoreRoots:
        """The folders ``config`` says to scan; ``hf_cache`` is where the Hugging Face cache is."""
        dirs = tuple(Path(d).expanduser() for d in config.store.dirs)
        return cls(data_dir / "models", hf_cache if config.store.hf_cache else None, dirs)


def scan(roots: StoreRoots, configured: Sequence[ModelConfig] = ()) -> list[LocalModel]:
    """Every model found, first name and first path winning: configured, data dir, HF cache, dirs."""
    found: list[LocalModel] = []
    names: set[str] = set()
    paths: set[Path] = set()
    for model in _all(roots, configured):
        path = model.path.resolve()
        if model.name in names or path in paths:
            continue
        names.add(model.name)
        paths.add(path)
        found.append(model)
    return found


def local_model_configs(roots: StoreRoots) -> list[ModelConfig]:
    """The models on disk as config entries (configured ones are merged in by ``with_local_models``)."""
    return [m.model_config() for m in scan(roots)]


def find(models: Iterable[LocalModel], name: str) -> LocalModel:
    for model in models:
        if model.name == name:
            return model
    raise LocalModelNotFound(f"no local model named {name!r} (`opta-lmx models` lists them)")


def _all(roots: StoreRoots, configured: Sequence[ModelConfig]) -> Iterator[LocalModel]:
    for entry in configured:
        path = Path(entry.path).expanduser()
        if (model := describe(path, entry.name, "config")) is not None:
            yield model
    yield from _rooted(_scan_folder(roots.models_dir, "data"), roots.models_dir)
    if roots.hf_cache is not None:
        yield from _rooted(_scan_hf_cache(roots.hf_cache), roots.hf_cache)
    for folder in roots.dirs:
        yield from _rooted(_scan_folder(folder, "dir"), folder)


def _rooted(models: Iterator[LocalModel], root: Path) -> Iterator[LocalModel]:
    for model in models:
        yield replace(model, root=root)


def _scan_folder(root: Path, source: Source) -> Iterator[LocalModel]:
    """Models directly in ``root`` (``name``) or one level down (``publisher/name``)."""
    for entry in _visible(root):
        models = list(_models_in(entry, entry.name if entry.is_dir() else entry.stem, source))
        if models or not entry.is_dir():
            yield from models
            continue
        for child in _visible(entry):
            yield from _models_in(child, f"{entry.name}/{child.name if child.is_dir() else child.stem}", source)


def _visible(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return []


def _models_in(path: Path, name: str, source: Source) -> Iterator[LocalModel]:
    """The model a directory holds (MLX/HF layout), or its GGUF files (one: the directory's
    name; several: ``name/stem`` each), or the GGUF file ``path`` itself."""
    if path.is_file():
        if path.suffix == ".gguf" and (model := describe(path, name, source)) is not None:
            yield model
        return
    if not path.is_dir():
        return
    if (path / "config.json").is_file():
        if (model := describe(path, name, source)) is not None:
            yield model
        return
    ggufs = [p for p in _visible(path) if p.suffix == ".gguf" and _is_main_gguf(p)]
    for gguf in ggufs:
        stem = _SPLIT.sub(r"\g<stem>", gguf.stem)
        if (model := describe(gguf, name if len(ggufs) == 1 else f"{name}/{stem}", source)) is not None:
            yield model


def _is_main_gguf(path: Path) -> bool:
    if path.name.lower().startswith("mmproj"):
        return False  # a vision projector, not a language model
    split = _SPLIT.match(path.stem)
    return split is None or int(split.group("part")) == 1


def _scan_hf_cache(cache: Path) -> Iterator[LocalModel]:
    if not cache.is_dir():
        return
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

    try:
        info = scan_cache_dir(cache)
    except (CacheNotFound, CorruptedCacheException) as exc:
        log.warning("cannot read the Hugging Face cache %s: %s", cache, exc)
        return
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        main = repo.refs.get("main")
        revision = main or max(repo.revisions, key=lambda r: r.last_modified)
        yield from _models_in(revision.snapshot_path, repo.repo_id, "hf-cache")


def describe(path: Path, name: str, source: Source) -> LocalModel | None:
    """``path`` as a LocalModel, read from its files; None (logged) when it is not a complete
    model or its name cannot be a model name."""
    if not MODEL_NAME_PATTERN.match(name):
        log.info("skipping %s: %r cannot be a model name", path, name)
        return None
    try:
        if path.is_file() and path.suffix == ".gguf":
            return _describe_gguf(path, name, source)
        if path.is_dir() and (path / "config.json").is_file():
            return _describe_directory(path, name, source)
    except (ModelStoreError, OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        log.info("skipping %s: %s", path, exc)
    return None


def _describe_gguf(path: Path, name: str, source: Source) -> LocalModel:
    gguf = read_gguf(path, arrays=False)
    parts = [path]
    if (split := _SPLIT.match(path.stem)) is not None:
        parts = sorted(path.parent.glob(f"{split.group('stem')}-*-of-*.gguf"))
    context = gguf.arch_value("context_length")
    return LocalModel(
        name=name,
        path=path,
        format="gguf",
        source=source,
        architecture=gguf.architecture,
        parameters=sum(t.n_elements for t in gguf.tensors) if len(parts) == 1 else None,
        size=sum(p.stat().st_size for p in parts),
        quantization=gguf.quantization(),
        context_length=int(context) if context is not None else None,
    )


def _describe_directory(path: Path, name: str, source: Source) -> LocalModel | None:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    weights = _weight_files(path)
    if not weights:
        return None
    tensors: dict[str, dict] = {}
    for file in weights:
        tensors.update(_safetensors_header(file))
    tensors.pop("__metadata__", None)
    text = config.get("text_config") or {}
    quant = config.get("quantization") or config.get("quantization_config") or {}
    context = config.get("max_position_embeddings") or text.get("max_position_embeddings")
    return LocalModel(
        name=name,
        path=path,
        format="mlx",
        source=source,
        architecture=str(config.get("model_type") or text.get("model_type") or "unknown"),
        parameters=_parameters(tensors, quant),
        size=sum(p.stat().st_size for p in weights),
        quantization=_quantization_label(config, quant, tensors),
        context_length=int(context) if context else None,
    )


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files, or [] when the index names a shard that is not there (incomplete)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        files = [path / shard for shard in shards]
        return files if files and all(f.is_file() for f in files) else []
    return sorted(p for p in path.glob("*.safetensors") if p.is_file())


_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _quantization_label(config: dict, quant: dict, tensors: dict[str, dict]) -> str:
    if bits := quant.get("bits"):
        mode = quant.get("mode", "affine")
        return f"{bits}-bit" + (f" {mode}" if mode != "affine" else "") + f" g{quant.get('group_size', 64)}"
    if method := quant.get("quant_method"):
        return str(method)
    # The dtype most of the weights are stored in.
    sizes: dict[str, int] = {}
    for meta in tensors.values():
        sizes[meta["dtype"]] = sizes.get(meta["dtype"], 0) + math.prod(meta["shape"])
    stored = max(sizes, key=sizes.__getitem__) if sizes else "unknown"
    return _DTYPES.get(stored, stored.lower())


def _parameters(tensors: dict[str, dict], quant: dict) -> int | None:
    """From the safetensors headers; a quantized weight holds one group of values per scale."""
    total = 0
    for key, meta in tensors.items():
        if key.endswith((".scales", ".biases")):
            continue
        count = math.prod(meta["shape"])
        base = key.rsplit(".", 1)[0]
        if meta["dtype"] == "U32" and (scales := tensors.get(f"{base}.scales")) is not None:
            group_size = (quant.get(base) or {}).get("group_size") or quant.get("group_size") or 64
            count = math.prod(scales["shape"]) * group_size
        total += count
    return total or None


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 * 1024 * 1024:
            raise ModelStoreError(f"{path}: implausible safetensors header")
        return json.loads(f.read(length))
