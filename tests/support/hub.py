"""A stand-in Hugging Face hub on 127.0.0.1: the routes ``huggingface_hub`` calls to list and
download a repository (repo info, tree, HEAD/GET ``resolve`` with ranges), serving real files.

Faults on demand: ``cut_once`` ends a file's first transfer after N bytes (the connection drops);
``corrupt`` serves a file with one byte changed (same size, the listing keeps the real hash);
``delay`` slows every chunk so that a test can interrupt a transfer in the middle; ``gate``, while
it is not set, holds every file's bytes back (its headers go out), so that a test can look at a
transfer that has begun and cannot end yet.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

_LFS = (".safetensors", ".gguf")
_CHUNK = 64 * 1024


@dataclass
class HubFile:
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:
        return hashlib.sha1(f"blob {len(self.data)}\0".encode() + self.data).hexdigest()


@dataclass
class StandInHub:
    repos: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    cut_once: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    delay: float = 0.0
    gate: threading.Event | None = None
    # (method, path, Range header) of every request, in order.
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    sha: str = "0123456789abcdef0123456789abcdef01234567"

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repos[repo_id] = {name: HubFile(data) for name, data in files.items()}

    def add_directory(self, repo_id: str, directory: Path) -> None:
        self.add_repo(repo_id, {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()})

    def ranges(self, filename: str) -> list[str]:
        """The Range headers of the GETs of ``filename`` ('' for a whole-file request)."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + filename)]


def _tree(files: dict[str, HubFile]) -> list[dict]:
    entries = []
    for name, file in files.items():
        entry = {"type": "file", "path": name, "size": len(file.data), "oid": file.blob_id}
        if name.endswith(_LFS):
            entry["lfs"] = {"oid": file.sha256, "size": len(file.data), "pointerSize": 134}
        entries.append(entry)
    return entries


class _Handler(BaseHTTPRequestHandler):
    hub: StandInHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        hub = self.hub
        hub.requests.append((self.command, self.path.split("?")[0], self.headers.get("Range", "")))
        path = self.path.split("?")[0]
        if m := re.match(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$", path):
            return self._json(m.group(1), lambda files: {"id": m.group(1), "sha": hub.sha, "siblings": [{"rfilename": n} for n in files]})
        if m := re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)$", path):
            return self._json(m.group(1), _tree)
        if m := re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path):
            return self._file(m.group(1), m.group(3), head)
        self._error(404, "EntryNotFound", "no such route")

    def _json(self, repo_id: str, body) -> None:  # body: files -> JSON object
        files = self.hub.repos.get(repo_id)
        if files is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        data = json.dumps(body(files)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _file(self, repo_id: str, name: str, head: bool) -> None:
        hub = self.hub
        files = hub.repos.get(repo_id)
        if files is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        file = files.get(name)
        if file is None:
            return self._error(404, "EntryNotFound", f"{name} not found")
        data = file.data
        if name in hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        if m := re.match(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(m.group(1))
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", hub.sha)
        etag = file.sha256 if name.endswith(_LFS) else file.blob_id
        self.send_header("ETag", f'"{etag}"')
        if name.endswith(_LFS):
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if head:
            return
        if hub.gate is not None:
            hub.gate.wait(timeout=120)
        cut = hub.cut_once.pop(name, None) if self.command == "GET" else None
        for chunk in _chunks(data[start:], cut):
            if hub.delay:
                time.sleep(hub.delay)
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
        if cut is not None:
            self.close_connection = True
            self.connection.shutdown(2)

    def _error(self, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _chunks(data: bytes, cut: int | None) -> Iterator[bytes]:
    end = len(data) if cut is None else cut
    for offset in range(0, end, _CHUNK):
        yield data[offset : min(offset + _CHUNK, end)]


class HubServer:
    """Runs a ``StandInHub`` on a free loopback port in a thread; ``url`` is its endpoint."""

    def __init__(self, hub: StandInHub) -> None:
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
