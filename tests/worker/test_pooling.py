"""Pooling and the sentence-transformers files that choose it: no model, small arrays."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from opta_lmx.worker.engines.pooling import SentenceConfig, normalized, pool

# Two rows, three positions, two features; the second row's last position is padding.
HIDDEN = mx.array([[[1.0, 2.0], [3.0, 4.0], [5.0, -6.0]], [[7.0, 8.0], [-9.0, 10.0], [100.0, 100.0]]])
ATTENTION = mx.array([[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("cls", [[1, 2], [7, 8]]),
        ("mean", [[3, 0], [-1, 9]]),
        ("max", [[5, 4], [7, 10]]),
        ("mean_sqrt_len", [[9 / 3**0.5, 0], [-2 / 2**0.5, 18 / 2**0.5]]),
        ("last", [[5, -6], [-9, 10]]),
    ],
)
def test_each_mode_looks_at_real_tokens_only(mode: str, expected: list[list[float]]) -> None:
    np.testing.assert_allclose(np.array(pool(HIDDEN, ATTENTION, (mode,))), expected, rtol=1e-6)


def test_several_modes_are_concatenated_in_order() -> None:
    both = np.array(pool(HIDDEN, ATTENTION, ("cls", "mean")))
    np.testing.assert_allclose(both, [[1, 2, 3, 0], [7, 8, -1, 9]], rtol=1e-6)


def test_normalized_rows_have_unit_length_and_zero_stays_zero() -> None:
    rows = np.array(normalized(mx.array([[3.0, 4.0], [0.0, 0.0]])))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


def write(path: Path, name: str, value: object) -> None:
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(value))


MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}


def test_reads_pooling_normalize_length_and_matryoshka(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"matryoshka_dimensions": [16, 32]})
    write(tmp_path, "modules.json", [*MODULES, NORMALIZE])
    write(tmp_path, "1_Pooling/config.json", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    write(tmp_path, "sentence_bert_config.json", {"max_seq_length": 128})
    assert SentenceConfig.read(tmp_path) == SentenceConfig(("cls",), True, 128, True, (16, 32))


def test_a_plain_encoder_is_mean_pooled_and_not_normalised(tmp_path: Path) -> None:
    write(tmp_path, "config.json", {"is_matryoshka": True})
    assert SentenceConfig.read(tmp_path) == SentenceConfig(("mean",), False, None, True, ())


@pytest.mark.parametrize(
    ("modules", "pooling", "refusal"),
    [
        ([*MODULES, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}], {"pooling_mode_mean_tokens": True}, "Dense"),
        (MODULES, {"pooling_mode_weightedmean_tokens": True}, "weighted mean"),
        (MODULES, {"pooling_mode_lasttoken": True, "include_prompt": False}, "include_prompt"),
        (MODULES, {"pooling_mode_mean_tokens": False}, "no pooling mode"),
    ],
)
def test_pipelines_it_cannot_reproduce_are_refused(tmp_path: Path, modules: list, pooling: dict, refusal: str) -> None:
    write(tmp_path, "modules.json", modules)
    write(tmp_path, "1_Pooling/config.json", pooling)
    with pytest.raises(ValueError, match=refusal):
        SentenceConfig.read(tmp_path)
