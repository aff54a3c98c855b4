"""The GGUF header reader against files written by the gguf package's own writer."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from opta_lmx.errors import ModelStoreError
from opta_lmx.store.gguf_file import read_gguf


def _write(path: Path) -> dict[str, np.ndarray]:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(4096)
    writer.add_float32("llama.rope.freq_base", 500000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_string("general.name", "héllo ✓")
    writer.add_token_list(["a", "b", "<|x|>"])
    writer.add_array("some.floats", [0.5, 1.5])
    writer.add_array("some.nested", [[1, 2], [3]])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    tensors = {
        "one.weight": np.arange(64, dtype=np.float32).reshape(2, 32),
        "two.weight": np.ones(96, dtype=np.float32),
    }
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.add_tensor("three.weight", gguf.quants.quantize(np.ones((4, 64), np.float32), gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def test_reads_metadata_and_tensors(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    tensors = _write(path)
    file = read_gguf(path)
    assert file.architecture == "llama"
    assert file.arch_value("context_length") == 4096
    assert file.arch_value("rope.freq_base") == 500000.0
    assert file.metadata["tokenizer.ggml.add_bos_token"] is True
    assert file.metadata["general.name"] == "héllo ✓"
    assert file.metadata["tokenizer.ggml.tokens"] == ["a", "b", "<|x|>"]
    assert file.metadata["some.floats"] == [0.5, 1.5]
    assert file.metadata["some.nested"] == [[1, 2], [3]]
    assert file.quantization() == "Q8_0"
    assert [(t.name, t.shape) for t in file.tensors] == [("one.weight", (2, 32)), ("two.weight", (96,)), ("three.weight", (4, 64))]
    for tensor in file.tensors[:2]:
        got = np.asarray(file.tensor_bytes(tensor)).view(np.float32).reshape(tensor.shape)
        np.testing.assert_array_equal(got, tensors[tensor.name])
    three = file.tensors[2]
    assert file.tensor_bytes(three).shape == (4, 68)  # 2 blocks of 34 bytes per row
    file.check_complete()


def test_skipping_arrays_keeps_their_lengths(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    _write(path)
    file = read_gguf(path, arrays=False)
    assert file.metadata["tokenizer.ggml.tokens"].count == 3
    assert file.metadata["general.name"] == "héllo ✓"
    assert sum(t.n_elements for t in file.tensors) == 64 + 96 + 256


def test_truncated_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    _write(path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ModelStoreError, match="truncated"):
        read_gguf(path).check_complete()
    path.write_bytes(data[:200])
    with pytest.raises(ModelStoreError, match="m.gguf"):
        read_gguf(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelStoreError, match="not a GGUF file"):
        read_gguf(path)
