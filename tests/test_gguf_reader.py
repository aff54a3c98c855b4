"""The one GGUF header reader, against files written by the gguf package's own writer."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from opta_lmx.gguf_reader import GgufFormatError, Skipped, read_header


def write(path: Path, tokens: list[str], alignment: int | None = None) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(3)
    writer.add_array("llama.attention.head_count_kv", [2, 4, 2])
    writer.add_token_list(tokens)
    writer.add_token_scores([0.5] * len(tokens))
    if alignment:
        writer.add_custom_alignment(alignment)
    elif alignment is not None:
        writer.add_uint32("general.alignment", alignment)
    writer.add_tensor("w", np.arange(24, dtype=np.float32).reshape(3, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_arrays_longer_than_asked_are_skipped_with_their_length(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf", ["a", "b", "c", "d", "e"])
    whole = read_header(path).metadata
    assert whole["tokenizer.ggml.tokens"] == ["a", "b", "c", "d", "e"]
    assert whole["tokenizer.ggml.scores"] == [0.5] * 5
    short = read_header(path, longest_array=3).metadata
    assert short["llama.attention.head_count_kv"] == [2, 4, 2]
    assert short["tokenizer.ggml.tokens"] == Skipped(gguf.GGUFValueType.STRING, 5)
    assert short["tokenizer.ggml.scores"] == Skipped(gguf.GGUFValueType.FLOAT32, 5)
    assert short["llama.block_count"] == 3


def test_vocabulary_entries_are_found_read_or_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf", ["a", "<think>", "</think>", "x"])
    asked = {b"<think>", b"<tool_call>"}
    assert read_header(path, find_tokens=asked).found == {b"<think>"}
    assert read_header(path, longest_array=0, find_tokens=asked).found == {b"<think>"}
    assert read_header(path, longest_array=0).found == frozenset()


def test_tensor_offsets_follow_the_alignment(tmp_path: Path) -> None:
    for alignment in (32, 64):
        header = read_header(write(tmp_path / f"m{alignment}.gguf", ["a"], alignment))
        (tensor,) = header.tensors
        assert (tensor.name, tensor.shape, tensor.offset % alignment) == ("w", (3, 8), 0)
        data = np.frombuffer((tmp_path / f"m{alignment}.gguf").read_bytes(), np.float32, 24, tensor.offset)
        assert data.tolist() == list(range(24))


@pytest.mark.parametrize("cut", [3, 20, 60])
def test_a_cut_or_foreign_file_is_a_format_error(tmp_path: Path, cut: int) -> None:
    path = write(tmp_path / "m.gguf", ["a", "b"])
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(GgufFormatError):
        read_header(path)


def test_an_empty_file_and_impossible_lengths_are_format_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GgufFormatError, match="empty"):
        read_header(empty)
    # One key, a string array of 2**62 entries whose first string says it is 2**63 bytes long.
    huge = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 1 << 62)
    path = tmp_path / "huge.gguf"
    path.write_bytes(huge + struct.pack("<Q", 1 << 63) + b"x" * 16)
    for longest in (None, 0):
        with pytest.raises(GgufFormatError):
            read_header(path, longest_array=longest)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 6, 1 << 60))
    with pytest.raises(GgufFormatError):  # floats past any offset
        read_header(path, longest_array=0)


def test_a_bad_alignment_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(GgufFormatError, match="alignment"):
        read_header(write(tmp_path / "m.gguf", ["a"], 0))
