"""The prompt cache's disk tier on the real tiny model, engines driven directly: what leaves memory
is written by a thread of its own, a later engine for the same weights starts from it with the
same answers, foreign and damaged files are removed unused, and the byte bound holds."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from opta_lmx.config import EngineOptions
from opta_lmx.demo.builder import build_demo_model
from opta_lmx.proto import ChatMessage, Finished, Generate
from opta_lmx.worker.engines import mlx_kv_reuse
from opta_lmx.worker.engines.mlx import MlxEngine
from opta_lmx.worker.kv_disk import KVDiskStore
from tests.worker.test_mlx_engine import Transcript, drain
from tests.worker.test_mlx_prompt_cache import UNRELATED, follow_up, params, run

# Prompts sharing no first token, long enough to be worth a read from disk.
LONG = [list(range(start, start + 40)) for start in (20, 120, 220, 320)]
STORY = [ChatMessage("system", "You tell long stories about animals."), ChatMessage("user", "Tell me about a fox.")]


def tiered(model: Path, directory: Path, name: str = "tiny", **options: object) -> MlxEngine:
    return MlxEngine(name, str(model), EngineOptions(kv_disk_dir=str(directory), **options))  # type: ignore[arg-type]


def files(directory: Path) -> list[Path]:
    """The disk tier's files of the model named "tiny" under ``directory`` (its kv_disk_dir)."""
    return sorted((directory / "tiny").glob("*.kv"))


@pytest.fixture(scope="module")
def uncached(tiny_model: Path) -> MlxEngine:
    return MlxEngine("tiny", str(tiny_model), EngineOptions(prompt_cache_entries=0))


@pytest.fixture
def first_turn(tiny_model: Path, tmp_path: Path) -> tuple[Path, Generate]:
    """A conversation's first turn on an engine that then exits: its cache is on disk."""
    engine = tiered(tiny_model, tmp_path / "kv")
    text, finished, _ = run(engine, Generate(1, STORY, params()))
    assert not files(tmp_path / "kv")  # still in memory
    engine.close()
    assert len(files(tmp_path / "kv")) == 1
    return tmp_path / "kv", Generate(2, follow_up(STORY, text), params())


def test_a_later_engine_takes_the_next_turn_from_disk_and_answers_the_same(
    tiny_model: Path, first_turn, uncached
) -> None:
    directory, turn = first_turn
    engine = tiered(tiny_model, directory)
    text, finished, computed = run(engine, turn)
    first_prompt = len(engine.prompt_tokens(Generate(0, STORY)))
    assert finished.cached_tokens > first_prompt
    assert computed == finished.prompt_tokens - finished.cached_tokens
    assert text == run(uncached, turn)[0]


def test_a_damaged_file_is_removed_unused(tiny_model: Path, first_turn, uncached) -> None:
    directory, turn = first_turn
    (path,) = files(directory)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # a flipped bit in the KV values: only the digest can tell
    path.write_bytes(bytes(data))
    engine = tiered(tiny_model, directory)
    text, finished, computed = run(engine, turn)
    assert (finished.cached_tokens, computed) == (0, finished.prompt_tokens)
    assert not path.exists()
    assert text == run(uncached, turn)[0]


def test_a_file_of_other_weights_and_a_torn_one_are_removed_at_start(
    tiny_model: Path, first_turn, tmp_path: Path, uncached
) -> None:
    directory, turn = first_turn
    other_model = build_demo_model(tmp_path / "other", "tiny", seed=1)
    other_dir = tmp_path / "other-kv"
    (other_dir / "tiny").mkdir(parents=True)
    (path,) = files(directory)
    shutil.copy(path, other_dir / "tiny" / path.name)  # a file written for the seed-0 weights
    (other_dir / "tiny" / "torn.kv").write_bytes(path.read_bytes()[:100])
    engine = tiered(other_model, other_dir)
    assert not list((other_dir / "tiny").iterdir())
    _, finished, _ = run(engine, turn)
    assert finished.cached_tokens == 0
    # Another model under the same root has a directory of its own: the first one's file stays.
    tiered(other_model, directory, name="other").close()
    assert files(directory) == [path]
    # Options that change the KV make other caches too: a rotating cache's engine takes nothing.
    engine = tiered(tiny_model, directory, max_kv_size=1024)
    text, finished, _ = run(engine, turn)
    assert finished.cached_tokens == 0 and not files(directory)
    assert text == run(uncached, turn)[0]


def test_a_read_that_does_not_come_is_given_up(tiny_model: Path, first_turn, uncached, monkeypatch) -> None:
    """The mechanism, not a timing: with the reader thread held and no patience left, the request
    starts from what memory holds (nothing) and answers as without any cache."""
    directory, turn = first_turn
    held = threading.Event()
    read_file = KVDiskStore._read_file
    monkeypatch.setattr(KVDiskStore, "_read_file", lambda self, entry: held.wait() and read_file(self, entry))
    monkeypatch.setattr(mlx_kv_reuse, "READ_PATIENCE", 0.0)
    engine = tiered(tiny_model, directory)
    text, finished, computed = run(engine, turn)
    held.set()
    assert (finished.cached_tokens, computed) == (0, finished.prompt_tokens)
    assert text == run(uncached, turn)[0]


def test_evicted_entries_go_to_disk_within_its_byte_bound(tiny_model: Path, tmp_path: Path) -> None:
    probe = tiered(tiny_model, tmp_path / "probe", prompt_cache_entries=1)
    run(probe, Generate(0, prompt_ids=LONG[0], params=params(8)))
    run(probe, Generate(1, prompt_ids=LONG[1], params=params(8)))  # evicts the first
    probe.close()
    one_file = files(tmp_path / "probe")[0].stat().st_size
    bound = one_file * 5 // 2  # two files fit, not three
    engine = tiered(tiny_model, tmp_path / "kv", prompt_cache_entries=1, kv_disk_bytes=bound)
    for rid, prompt in enumerate(LONG):
        run(engine, Generate(rid, prompt_ids=prompt, params=params(8)))
    engine.close()  # the last one too
    kept = files(tmp_path / "kv")
    assert len(kept) == 2 and sum(p.stat().st_size for p in kept) <= bound
    later = tiered(tiny_model, tmp_path / "kv", prompt_cache_entries=1, kv_disk_bytes=bound)
    newest_first = LONG[::-1]
    hits = [run(later, Generate(10 + i, prompt_ids=p, params=params(8)))[1].cached_tokens for i, p in enumerate(newest_first)]
    assert hits == [39, 39, 0, 0]  # the two least recently used were removed


def test_a_write_is_done_by_the_writer_thread_while_decoding_goes_on(
    tiny_model: Path, tmp_path: Path, monkeypatch
) -> None:
    """The mechanism, not a timing: with the writer thread held, evictions are queued and the
    model thread keeps generating; the files appear once the writer is let go."""
    held, writing = threading.Event(), []
    write_file = KVDiskStore._write_file

    def held_write(self, job):  # noqa: ANN001, ANN202
        writing.append(threading.current_thread().name)
        held.wait()
        return write_file(self, job)

    monkeypatch.setattr(KVDiskStore, "_write_file", held_write)
    engine = tiered(tiny_model, tmp_path / "kv", prompt_cache_entries=1)
    transcript = Transcript()
    transcript.add(engine.submit(Generate(100, [ChatMessage("user", "Keep going.")], params(64))))
    for rid, prompt in enumerate(UNRELATED):  # each finishes and evicts the one before
        run_beside = Generate(rid, prompt_ids=prompt, params=params(4))
        transcript.add(engine.submit(run_beside))
        while not transcript.ended(rid):
            transcript.add(engine.step())
    assert writing == ["kv-disk-writer"] and not files(tmp_path / "kv")
    assert not transcript.ended(100) and transcript.text(100)  # still generating meanwhile
    held.set()
    drain(engine, transcript)
    engine.close()
    assert isinstance(transcript.terminal(100), Finished)
    assert len(files(tmp_path / "kv")) == 5


def test_writes_past_the_pending_bound_are_dropped_not_waited_for(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    probe = tiered(tiny_model, tmp_path / "probe")
    run(probe, Generate(0, prompt_ids=UNRELATED[0], params=params(8)))
    probe.close()
    one_file = files(tmp_path / "probe")[0].stat().st_size
    held = threading.Event()
    write_file = KVDiskStore._write_file
    monkeypatch.setattr(KVDiskStore, "_write_file", lambda self, job: held.wait() and write_file(self, job))
    # The writer's queue holds what the memory tier may (prompt_cache_bytes): here one file's
    # worth, less than one entry in memory, so each cache goes to the writer as it is stored.
    engine = tiered(tiny_model, tmp_path / "kv", prompt_cache_bytes=one_file * 3 // 2)
    for rid, prompt in enumerate(UNRELATED):
        run(engine, Generate(rid, prompt_ids=prompt, params=params(8)))
    assert len(engine.prompt_cache) == 0
    held.set()
    engine.close()
    assert len(files(tmp_path / "kv")) == 1  # the first; the others were refused, not waited for
