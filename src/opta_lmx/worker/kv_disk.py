"""The disk tier of a worker's prompt cache: KV caches that left memory, kept as files, so that a
later worker for the same model (after a restart, a swap, an idle unload) starts from them.

Engine-neutral: an engine hands over the tokens a cache holds, a JSON-able ``layout`` saying how
to rebuild it, and its bytes (buffers); it gets the layout and the bytes back. One file per cache
in the model's directory, ``<sha256 of the tokens>.kv``::

    magic   8 bytes   b"OPTAKV\\x00\\x01"
    digest  32 bytes  sha256 of everything after it
    length  8 bytes   of the header, little-endian
    header  JSON      identity, number of tokens, payload bytes, trimmable, the engine's layout
    tokens  uint32 little-endian
    payload the engine's buffers, one after another

A file is used only if its identity is the model's (``weights_identity``: its files and the engine
options that change the KV) and its digest matches; any other file (another model's, a torn
write, a flipped bit) is removed, never loaded. The directory is bounded in bytes, least recently
used (written or read) removed first; recency survives restarts as the files' mtimes.

Threads: the engine's own thread looks entries up and asks for reads and writes, and never waits
for the disk. A writer thread writes files (to a temporary name, then renamed into place, so a
worker killed mid-write leaves no half file under a real name) and keeps the bound; a reader
thread reads and verifies. Buffers handed to ``write`` go back to the engine's thread to be
released (``release``): the writer only reads them. The index is shared under a lock that is
never held during file I/O. A SIGKILLed worker loses what was not written yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MAGIC = b"OPTAKV\x00\x01"
_DIGEST = 32
_PREFIX = len(MAGIC) + _DIGEST + 8  # magic, digest, header length
_SUFFIX = ".kv"
_TOKEN = np.dtype("<u4")
_SAMPLE = 1 << 20  # bytes of each weights file's beginning and end that go into its identity


def weights_identity(path: Path, extra: dict[str, Any]) -> str:
    """A hash naming a model's weights and what else decides its KV (``extra``: engine, versions,
    options such as KV quantization). Each file of the model (or the file itself) counts with its
    name, size, modification time and its first and last MiB: cheap at every load, and a
    re-downloaded or converted model gets a new identity. Files changed in place with their size,
    mtime, first and last MiB all kept would not be noticed."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        info = file.stat()
        digest.update(f"{file.name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
        with open(file, "rb") as f:
            digest.update(f.read(_SAMPLE))
            if info.st_size > 2 * _SAMPLE:
                f.seek(info.st_size - _SAMPLE)
                digest.update(f.read(_SAMPLE))
    return digest.hexdigest()


@dataclass
class DiskEntry:
    name: str
    tokens: np.ndarray  # little-endian uint32
    size: int
    trimmable: bool
    used: float  # when last written or read (time.time)


@dataclass
class DiskRead:
    """A read under way. Once ``ready`` is set, ``result`` is (layout, payload) or None (the file
    was missing, or was foreign or corrupt and has been removed)."""

    entry: DiskEntry
    usable: int  # prompt tokens the cache will give
    ready: threading.Event = field(default_factory=threading.Event)
    result: tuple[dict[str, Any], memoryview] | None = None


@dataclass
class _Write:
    entry: DiskEntry
    header: bytes
    buffers: list[Any]  # C-contiguous buffers; released on the engine's thread


class KVDiskStore:
    """The files of one model's disk tier (``directory``), at most ``max_bytes`` of them.

    ``max_pending`` bounds the bytes waiting to be written: past it, a ``write`` is refused
    (the cache is dropped, as it would have been without the tier) rather than holding memory.
    """

    def __init__(self, directory: Path, identity: str, max_bytes: int, max_pending: int) -> None:
        self.directory = directory
        self.identity = identity
        self.max_bytes = max_bytes
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._entries: dict[str, DiskEntry] = {}
        self._pending = 0  # bytes queued for the writer
        self._writes: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[DiskRead | None] = queue.SimpleQueue()
        self._written: queue.SimpleQueue[_Write] = queue.SimpleQueue()
        directory.mkdir(parents=True, exist_ok=True)
        self._scan()
        self._writer = threading.Thread(target=self._write_loop, name="kv-disk-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="kv-disk-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    # --- the engine's thread -------------------------------------------------------------------

    def lookup(self, prompt: Sequence[int]) -> tuple[DiskEntry | None, int]:
        """The entry giving the most of ``prompt`` and how many tokens (always fewer than the
        prompt's: one is left to feed); an entry longer than what it gives must be trimmable."""
        if not prompt:
            return None, 0
        wanted = np.asarray(prompt, dtype=_TOKEN)
        best: tuple[DiskEntry | None, int] = (None, 0)
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            usable = min(shared_prefix(entry.tokens, wanted), len(wanted) - 1)
            if usable < len(entry.tokens) and not entry.trimmable:
                continue
            if usable > best[1]:
                best = (entry, usable)
        return best

    def covers(self, tokens: Sequence[int], trimmable: bool) -> bool:
        """Whether a file already holds ``tokens`` (or, trimmable, starts with them)."""
        wanted = np.asarray(tokens, dtype=_TOKEN)
        with self._lock:
            entries = list(self._entries.values())
        return any(
            len(e.tokens) >= len(wanted)
            and (len(e.tokens) == len(wanted) or (trimmable and e.trimmable))
            and shared_prefix(e.tokens, wanted) == len(wanted)
            for e in entries
        )

    def write(
        self, tokens: Sequence[int], layout: dict[str, Any], buffers: list[Any], trimmable: bool, force: bool = False
    ) -> bool:
        """Queue a cache for writing; False if refused (already on disk, larger than the tier,
        or too much waiting and not ``force``). ``buffers`` must stay unchanged until released."""
        array = np.asarray(tokens, dtype=_TOKEN)
        payload = sum(memoryview(b).nbytes for b in buffers)
        header = json.dumps(
            {
                "identity": self.identity,
                "tokens": len(array),
                "payload": payload,
                "trimmable": trimmable,
                "layout": layout,
            }
        ).encode()
        size = _PREFIX + len(header) + array.nbytes + payload
        if size > self.max_bytes or self.covers(tokens, trimmable):
            return False
        with self._lock:
            if not force and self._pending + size > self._max_pending:
                return False
            self._pending += size
        name = hashlib.sha256(array.tobytes()).hexdigest()[:40]
        entry = DiskEntry(name, array, size, trimmable, time.time())
        self._writes.put(_Write(entry, header, [array, *buffers]))
        return True

    def read(self, entry: DiskEntry, usable: int) -> DiskRead:
        """Start reading ``entry``; the result comes on the returned ``DiskRead``."""
        entry.used = time.time()
        ticket = DiskRead(entry, usable)
        self._reads.put(ticket)
        return ticket

    def discard(self, entry: DiskEntry) -> None:
        """Remove ``entry``'s file: its contents turned out not to fit the model."""
        self._drop(entry, self._path(entry.name))

    def release(self) -> None:
        """Drop the buffers of finished writes (on the engine's thread, which made them)."""
        while True:
            try:
                self._written.get_nowait().buffers.clear()
            except queue.Empty:
                return

    def close(self) -> None:
        """Write everything queued, then stop both threads."""
        self._writes.put(None)
        self._reads.put(None)
        self._writer.join()
        self._reader.join()
        self.release()

    # --- start-up ------------------------------------------------------------------------------

    def _scan(self) -> None:
        removed = 0
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                removed += self._remove_stale_temporary(path)
            elif path.suffix == _SUFFIX:
                entry = self._read_index(path)
                if entry is None:
                    _unlink(path)
                    removed += 1
                else:
                    self._entries[entry.name] = entry
        for entry in self._over_bound(keep=None):
            _unlink(self._path(entry.name))
        if self._entries or removed:
            print(
                f"kv disk tier {self.directory}: {len(self._entries)} caches, {self.nbytes} bytes; "
                f"{removed} foreign, corrupt or unfinished files removed",
                file=sys.stderr,
                flush=True,
            )

    def _read_index(self, path: Path) -> DiskEntry | None:
        """The entry a file holds, from its header, or None if it is not one of this model's."""
        try:
            with open(path, "rb") as f:
                prefix = f.read(_PREFIX)
                if len(prefix) < _PREFIX or prefix[: len(MAGIC)] != MAGIC:
                    return None
                (length,) = struct.unpack("<Q", prefix[-8:])
                header = json.loads(f.read(length))
                if header.get("identity") != self.identity:
                    return None
                count, payload = int(header["tokens"]), int(header["payload"])
                tokens = np.frombuffer(f.read(4 * count), dtype=_TOKEN)
                info = os.fstat(f.fileno())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if len(tokens) != count or count == 0 or info.st_size != _PREFIX + length + 4 * count + payload:
            return None
        if path.stem != hashlib.sha256(tokens.tobytes()).hexdigest()[:40]:
            return None
        return DiskEntry(path.stem, tokens, info.st_size, bool(header.get("trimmable")), info.st_mtime)

    @staticmethod
    def _remove_stale_temporary(path: Path) -> int:
        """A temporary file left by a worker that died mid-write (its pid is in the name)."""
        try:
            os.kill(int(path.name.split(".")[-2]), 0)
            return 0  # a live worker (a restart overlapping a drain) is still writing it
        except (ValueError, IndexError, ProcessLookupError):
            _unlink(path)
            return 1
        except PermissionError:
            return 0

    # --- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (job := self._writes.get()) is not None:
            try:
                self._write_file(job)
            except OSError as exc:
                print(f"kv disk tier: cannot write a cache: {exc}", file=sys.stderr, flush=True)
            finally:
                with self._lock:
                    self._pending -= job.entry.size
                self._written.put(job)

    def _write_file(self, job: _Write) -> None:
        entry = job.entry
        final = self._path(entry.name)
        temporary = final.with_name(f"{entry.name}.{os.getpid()}.tmp")
        digest = hashlib.sha256()
        with open(temporary, "wb") as f:
            f.write(MAGIC + bytes(_DIGEST))
            for part in (struct.pack("<Q", len(job.header)), job.header, *job.buffers):
                digest.update(part)
                f.write(part)
            f.seek(len(MAGIC))
            f.write(digest.digest())
        os.replace(temporary, final)
        with self._lock:
            self._entries[entry.name] = entry
            doomed = self._superseded(entry) + self._over_bound(keep=entry)
        for gone in doomed:
            _unlink(self._path(gone.name))

    def _superseded(self, entry: DiskEntry) -> list[DiskEntry]:
        """Entries that ``entry`` starts with: it can be trimmed back to any of them (lock held)."""
        if not entry.trimmable:
            return []
        doomed = [
            e
            for e in self._entries.values()
            if e is not entry and len(e.tokens) < len(entry.tokens) and shared_prefix(e.tokens, entry.tokens) == len(e.tokens)
        ]
        for e in doomed:
            del self._entries[e.name]
        return doomed

    def _over_bound(self, keep: DiskEntry | None) -> list[DiskEntry]:
        """The least recently used entries to remove to fit ``max_bytes`` (lock held or not yet
        shared). ``keep`` goes last: it was just written."""
        total = sum(e.size for e in self._entries.values())
        order = sorted(self._entries.values(), key=lambda e: (e is keep, e.used))
        doomed = []
        for e in order:
            if total <= self.max_bytes:
                break
            doomed.append(e)
            total -= e.size
            del self._entries[e.name]
        return doomed

    # --- the reader thread ---------------------------------------------------------------------

    def _read_loop(self) -> None:
        while (ticket := self._reads.get()) is not None:
            try:
                ticket.result = self._read_file(ticket.entry)
            finally:
                ticket.ready.set()

    def _read_file(self, entry: DiskEntry) -> tuple[dict[str, Any], memoryview] | None:
        path = self._path(entry.name)
        try:
            with open(path, "rb") as f:
                data = bytearray(os.fstat(f.fileno()).st_size)
                f.readinto(data)
            os.utime(path)  # recency that outlives this process
        except OSError:
            self._drop(entry, None)  # removed meanwhile (the bound, another worker)
            return None
        view = memoryview(data)
        parsed = self._verify(view, entry)
        if parsed is None:
            print(f"kv disk tier: {path.name} is corrupt or foreign: removed", file=sys.stderr, flush=True)
            self._drop(entry, path)
        return parsed

    def _verify(self, data: memoryview, entry: DiskEntry) -> tuple[dict[str, Any], memoryview] | None:
        if len(data) < _PREFIX or data[: len(MAGIC)] != MAGIC:
            return None
        if hashlib.sha256(data[len(MAGIC) + _DIGEST :]).digest() != data[len(MAGIC) : len(MAGIC) + _DIGEST]:
            return None
        (length,) = struct.unpack("<Q", data[_PREFIX - 8 : _PREFIX])
        try:
            header = json.loads(bytes(data[_PREFIX : _PREFIX + length]))
        except ValueError:
            return None
        start = _PREFIX + length
        tokens = np.frombuffer(data[start : start + 4 * len(entry.tokens)], dtype=_TOKEN)
        if header.get("identity") != self.identity or not np.array_equal(tokens, entry.tokens):
            return None
        return header["layout"], data[start + 4 * len(entry.tokens) :]

    def _drop(self, entry: DiskEntry, path: Path | None) -> None:
        with self._lock:
            self._entries.pop(entry.name, None)
        if path is not None:
            _unlink(path)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}{_SUFFIX}"


def shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens the arrays ``a`` and ``b`` have in common."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
