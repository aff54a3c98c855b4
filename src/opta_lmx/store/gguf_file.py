"""A GGUF file as the model store sees it: the header (``opta_lmx.gguf_reader``: the inventory
needs only the scalars, the importer the arrays as plain lists) and the tensors' bytes, left on
disk until asked for (``tensor_bytes``). numpy and the ``gguf`` package are imported only for
tensor data: the supervisor's inventory reads headers without either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opta_lmx.errors import ModelStoreError
from opta_lmx.gguf_reader import FILE_TYPES, GgufFormatError, read_header

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    name: str
    # numpy order (GGUF lists dimensions innermost first)
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the file

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        except (ValueError, KeyError):
            raise ModelStoreError(f"tensor {self.name}: unknown GGML type {self.ggml_type}") from None
        return self.n_elements // block * size


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """``<architecture>.<key>``, e.g. ``context_length``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def quantization(self) -> str:
        """llama.cpp's name for the file's mix of tensor types (``Q4_K_M``), from ``general.file_type``."""
        file_type = self.metadata.get("general.file_type")
        return FILE_TYPES.get(file_type, f"file type {file_type}") if file_type is not None else "unknown"

    def check_complete(self) -> None:
        """``ModelStoreError`` if a tensor's data ends past the end of the file (a cut download)."""
        size = self.path.stat().st_size
        for tensor in self.tensors:
            if tensor.offset + tensor.n_bytes > size:
                raise ModelStoreError(f"{self.path}: truncated (tensor {tensor.name} ends past the end of the file)")

    def tensor_bytes(self, tensor: TensorInfo) -> np.ndarray:
        """The tensor's raw bytes (a read-only memory map), rows by bytes per row."""
        import numpy as np

        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=tensor.offset, shape=(tensor.n_bytes,))
        if len(tensor.shape) < 2:
            return data
        return data.reshape(*tensor.shape[:-1], tensor.n_bytes // math.prod(tensor.shape[:-1]))


def read_gguf(path: Path, arrays: bool = True) -> GGUFFile:
    """Read ``path``'s header. With ``arrays=False`` array values are skipped (kept as
    ``gguf_reader.Skipped``, with their length), which is all an inventory needs and much quicker
    for large vocabularies.

    Raises ``ModelStoreError`` naming the file when it is not a GGUF file or is cut short.
    """
    try:
        header = read_header(path, longest_array=None if arrays else 0, errors="surrogateescape")
    except (OSError, GgufFormatError) as exc:
        raise ModelStoreError(f"{path}: cannot read as GGUF: {exc}") from None
    tensors = [TensorInfo(t.name, t.shape, t.ggml_type, t.offset) for t in header.tensors]
    return GGUFFile(path, header.version, header.metadata, tensors)


def ggml_type_name(ggml_type: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"
