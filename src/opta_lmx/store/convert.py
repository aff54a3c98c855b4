"""``opta-lmx convert``: a GGUF file or a Hugging Face model directory becomes an MLX model directory.

GGUF files go through the project's importer (``gguf_import``); directories through mlx-lm's own
loading, casting and quantization. Either way the result is written in a staging directory and
renamed into place (``staging``). Imports mlx: runs in the command-line process, never in the
supervisor.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from opta_lmx.errors import ModelStoreError, UnsupportedModel
from opta_lmx.store.gguf_import import Progress, import_gguf
from opta_lmx.store.staging import staged

DTYPES = ("float32", "float16", "bfloat16")
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
# Printed steps of a directory conversion (mlx-lm has no per-tensor progress).
Say = Callable[[str], None]


def default_dtype() -> str:
    """float16 where MLX runs on a GPU (Metal or CUDA); float32 on a CPU, where MLX's float16
    arithmetic is many times slower (about 30x measured on x86_64)."""
    import mlx.core as mx

    return "float16" if mx.default_device().type == mx.DeviceType.gpu else "float32"


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(4) == b"GGUF"
    except OSError:
        return False


def convert(
    src: Path,
    dst: Path,
    bits: int | None = None,
    group_size: int = 64,
    dtype: str | None = None,
    progress: Progress | None = None,
    say: Say = lambda _: None,
    replace: bool = False,
) -> Path:
    """Write the MLX model for ``src`` at ``dst`` (which must not exist unless ``replace``).

    A GGUF keeps its Q4_0/Q4_1/Q8_0 tensors quantized unless ``bits`` asks for a quantization;
    with ``bits``, every linear and embedding layer is (re)quantized to ``bits`` in groups of
    ``group_size``. ``dtype`` defaults to what suits the machine (``default_dtype``).
    Raises ``ModelStoreError`` (``UnsupportedModel`` for what cannot be converted).
    """
    dtype = dtype or default_dtype()
    _check_options(bits, group_size, dtype)
    if is_gguf(src):
        with staged(dst, replace) as out:
            if bits is None:
                import_gguf(src, out, dtype, keep_quantized=True, progress=progress)
            else:
                with tempfile.TemporaryDirectory(prefix=".import-", dir=dst.parent) as imported:
                    import_gguf(src, Path(imported), dtype, keep_quantized=False, progress=progress)
                    say(f"quantizing to {bits} bits, group size {group_size}")
                    _convert_directory(Path(imported), out, bits, group_size, dtype, say)
        return dst
    if not (src / "config.json").is_file():
        raise ModelStoreError(f"{src} is neither a GGUF file nor a model directory (no config.json)")
    if not list(src.glob("*.safetensors")):
        raise UnsupportedModel(f"{src} has no .safetensors weights (other weight formats are not supported)")
    with staged(dst, replace) as out:
        _convert_directory(src, out, bits, group_size, dtype, say)
    return dst


def _check_options(bits: int | None, group_size: int, dtype: str) -> None:
    if bits is not None and bits not in BITS:
        raise ModelStoreError(f"bits must be one of {', '.join(map(str, BITS))}, not {bits}")
    if group_size not in GROUP_SIZES:
        raise ModelStoreError(f"group size must be one of {', '.join(map(str, GROUP_SIZES))}, not {group_size}")
    if dtype not in DTYPES:
        raise ModelStoreError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype}")


def _convert_directory(src: Path, out: Path, bits: int | None, group_size: int, dtype: str, say: Say) -> None:
    """mlx-lm's conversion of a local model directory: cast, then dequantize and quantize as asked."""
    import mlx.core as mx
    from mlx.utils import tree_map_with_path
    from mlx_lm.utils import dequantize_model, load, quantize_model, save_config, save_model

    say(f"loading {src}")
    try:
        # A local path: mlx-lm never reaches for the hub with one that exists.
        model, tokenizer, config = load(str(src.resolve()), return_config=True, lazy=True)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise UnsupportedModel(f"{src}: mlx-lm cannot load it: {exc}") from None
    target = getattr(mx, dtype)
    cast = getattr(model, "cast_predicate", lambda _: True)
    model.update(
        tree_map_with_path(
            lambda k, v: v.astype(target) if cast(k) and mx.issubdtype(v.dtype, mx.floating) else v, model.parameters()
        )
    )
    config["torch_dtype"] = dtype
    if bits is not None:
        if "quantization" in config:
            say("dequantizing")
            model = dequantize_model(model)
            config.pop("quantization", None)
            config.pop("quantization_config", None)
        say(f"quantizing to {bits} bits, group size {group_size}")
        model, config = quantize_model(model, config, group_size, bits)
    say(f"writing {out}")
    save_model(out, model, donate_model=True)
    save_config(config, out / "config.json")
    tokenizer.save_pretrained(str(out))
    for extra in ("generation_config.json",):
        if (src / extra).is_file():
            shutil.copy(src / extra, out / extra)
