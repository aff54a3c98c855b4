"""The disk tier's file store on its own (engine-neutral: bytes in, bytes out)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from opta_lmx.worker.kv_disk import KVDiskStore, weights_identity

MiB = 1 << 20


def store(directory: Path, identity: str = "model-a", max_bytes: int = 64 * MiB) -> KVDiskStore:
    return KVDiskStore(directory, identity, max_bytes, max_pending=64 * MiB)


def read_back(kv: KVDiskStore, prompt: list[int]) -> tuple[int, dict | None, bytes]:
    entry, usable = kv.lookup(prompt)
    if entry is None:
        return 0, None, b""
    ticket = kv.read(entry, usable)
    assert ticket.ready.wait(10)
    assert ticket.result is not None
    layout, payload = ticket.result
    return usable, layout, bytes(payload)


def test_a_written_cache_is_found_by_prefix_and_read_back_whole(tmp_path: Path) -> None:
    kv = store(tmp_path)
    payload = [np.arange(1000, dtype=np.float32), b"tail bytes"]
    assert kv.write(list(range(10, 60)), {"kind": "test"}, payload, trimmable=True)
    kv.close()
    kv = store(tmp_path)  # a later worker
    assert read_back(kv, list(range(10, 80))) == (50, {"kind": "test"}, payload[0].tobytes() + b"tail bytes")
    # A prompt that shares only a beginning takes that much (the cache can be trimmed); one
    # token is always left to compute.
    assert read_back(kv, list(range(10, 30)) + [7, 7])[0] == 20
    assert read_back(kv, list(range(10, 60)))[0] == 49
    assert kv.lookup([5, 6, 7]) == (None, 0)
    kv.close()


def test_a_cache_that_cannot_be_trimmed_is_used_only_whole(tmp_path: Path) -> None:
    kv = store(tmp_path)
    kv.write(list(range(10, 60)), {}, [b"x" * 100], trimmable=False)
    kv.close()
    kv = store(tmp_path)
    assert kv.lookup(list(range(10, 40)) + [1, 2])[0] is None
    assert kv.lookup(list(range(10, 60)))[0] is None  # the last token would have to go
    assert kv.lookup(list(range(10, 61)))[1] == 50
    kv.close()


def test_a_longer_cache_replaces_the_ones_it_starts_with(tmp_path: Path) -> None:
    kv = store(tmp_path)
    kv.write(list(range(10, 40)), {}, [b"a" * 100], trimmable=True)
    kv.close()
    kv = store(tmp_path)
    assert not kv.write(list(range(10, 30)), {}, [b"b" * 100], trimmable=True)  # already covered
    assert kv.write(list(range(10, 70)), {}, [b"c" * 100], trimmable=True)
    kv.close()
    assert len(list(tmp_path.glob("*.kv"))) == 1
    kv = store(tmp_path)
    assert read_back(kv, list(range(10, 40)) + [0])[2] == b"c" * 100
    kv.close()


def test_identity_and_damage_are_checked(tmp_path: Path) -> None:
    kv = store(tmp_path, identity="model-a")
    kv.write(list(range(10, 60)), {}, [b"v" * 4096], trimmable=True)
    kv.close()
    (path,) = tmp_path.glob("*.kv")
    # Read by another model: removed at start, never read.
    other = store(tmp_path, identity="model-b")
    assert len(other) == 0 and not path.exists()
    other.close()
    # A bit flipped in the payload passes the start-up check (headers only) and fails the read.
    kv = store(tmp_path, identity="model-a")
    kv.write(list(range(10, 60)), {}, [b"v" * 4096], trimmable=True)
    kv.close()
    (path,) = tmp_path.glob("*.kv")
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    kv = store(tmp_path, identity="model-a")
    entry, usable = kv.lookup(list(range(10, 80)))
    assert entry is not None
    ticket = kv.read(entry, usable)
    assert ticket.ready.wait(10) and ticket.result is None
    assert not path.exists() and kv.lookup(list(range(10, 80))) == (None, 0)
    kv.close()


def test_the_byte_bound_drops_the_least_recently_used(tmp_path: Path) -> None:
    kv = store(tmp_path)
    kv.write([1, 2, 3], {}, [b"x" * 1000], trimmable=True)
    kv.write([5, 6, 7], {}, [b"y" * 1000], trimmable=True)
    kv.close()
    size = next(tmp_path.glob("*.kv")).stat().st_size
    kv = store(tmp_path, max_bytes=2 * size)
    assert read_back(kv, [1, 2, 3, 4])[0] == 3  # used: now more recent than [5, 6, 7]
    assert kv.write([8, 9, 10], {}, [b"z" * 1000], trimmable=True)
    assert not kv.write([11, 12], {}, [b"w" * 3 * size], trimmable=True)  # larger than the tier
    kv.close()
    assert sum(p.stat().st_size for p in tmp_path.glob("*.kv")) == 2 * size
    kv = store(tmp_path, max_bytes=2 * size)
    assert [kv.lookup(p)[1] for p in ([1, 2, 3, 4], [5, 6, 7, 0], [8, 9, 10, 0])] == [3, 0, 3]
    kv.close()


def test_unfinished_files_of_dead_workers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"abc.{int(dead.stdout)}.tmp"
    live = tmp_path / f"def.{os.getpid()}.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    store(tmp_path).close()
    assert not stale.exists() and live.exists()


def test_the_identity_follows_the_files(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.safetensors").write_bytes(b"w" * (3 * MiB))
    first = weights_identity(model, {"kv_bits": 0})
    assert weights_identity(model, {"kv_bits": 0}) == first
    assert weights_identity(model, {"kv_bits": 8}) != first
    with open(model / "weights.safetensors", "r+b") as f:
        f.seek(3 * MiB - 5)
        f.write(b"other")
    os.utime(model / "weights.safetensors", ns=(0, (model / "weights.safetensors").stat().st_mtime_ns))
    assert weights_identity(model, {"kv_bits": 0}) != first
