"""Download a model from a Hugging Face hub into ``<data_dir>/models/<org>/<name>``.

Only what a model needs is fetched: the safetensors weights with the config and tokenizer files,
or, for a repository of GGUF files, one quantization (``quant``; Q4_K_M when there is one and
none was chosen). Files land in ``<data_dir>/models/.partial/<org>--<name>``, each first as a
``.part`` file, are checked against the hub's checksums (sha256 for LFS files, the git blob hash
for the others), and only then is the model moved into place. An interruption (Ctrl-C,
``cancel()``, a network failure, a full disk) leaves the partial directory, which the next pull of
the same repository continues, each ``.part`` from where it stopped (an HTTP range request); a
corrupt file is deleted and the pull fails naming it.

huggingface_hub lists the repository, resolves each file (``get_hf_file_metadata``) and moves the
bytes (``http_get``, which retries a dropped connection from where it was). Its own
``hf_hub_download``/``snapshot_download`` are not used: since 1.18 they delete a partial file on
any interruption (huggingface_hub #4196), and ``snapshot_download``'s worker threads cannot be
stopped before their file is done.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

from opta_lmx.errors import DownloadError, ModelStoreError
from opta_lmx.store.staging import commit

log = logging.getLogger("opta_lmx.store")

PARTIAL_DIR = ".partial"
DEFAULT_QUANT = "Q4_K_M"
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Top-level files a safetensors model needs (custom *.py code is never run, so never fetched).
_MODEL_FILE = re.compile(
    r"^(?:[^/]+\.json|[^/]+\.safetensors|tokenizer\.model|[^/]+\.tiktoken|tiktoken\.model|[^/]+\.txt|[^/]+\.jsonl|[^/]+\.jinja)$"
)
_QUANT = re.compile(r"(?:^|[-_.])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?=[-_.]|$)", re.IGNORECASE)
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$")

State = Literal["pending", "listing", "downloading", "done", "failed", "cancelled"]


class PullCancelled(DownloadError):
    """The pull was cancelled; its partial download is kept for the next pull to continue."""

    status = 499


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str  # git blob hash (sha1) of the file


@dataclass(frozen=True)
class PullStatus:
    repo_id: str
    revision: str
    state: State = "pending"
    files: tuple[str, ...] = ()
    current_file: str = ""
    done_bytes: int = 0
    total_bytes: int = 0
    # The file being fetched: its size and the bytes of it already here.
    file_done: int = 0
    file_bytes: int = 0
    message: str = ""  # what happened (done or failed)
    path: str = ""  # the model, once done
    name: str = ""  # the model's name, once done


def parse_spec(spec: str) -> tuple[str, str]:
    """``org/name[@revision]`` -> (repo id, revision); ``ModelStoreError`` if it is not one."""
    repo_id, _, revision = spec.partition("@")
    if not _REPO.match(repo_id) or ".." in repo_id:
        raise ModelStoreError(f"{spec!r} is not a repository name (expected ORG/NAME or ORG/NAME@REVISION)")
    return repo_id, revision or "main"


class Pull:
    """One download. ``run()`` blocks until it is done (returns the model's path) or raises
    ``DownloadError``; ``status`` and ``on_progress`` report as it goes, and ``cancel()`` from any
    thread stops it at the next network chunk (``PullCancelled``)."""

    def __init__(
        self,
        spec: str,
        models_dir: Path,
        quant: str | None = None,
        endpoint: str | None = None,
        on_progress: Callable[[PullStatus], None] | None = None,
    ) -> None:
        self.repo_id, self.revision = parse_spec(spec)
        self.models_dir = models_dir
        self.quant = quant
        self.endpoint = endpoint
        self._on_progress = on_progress
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._status = PullStatus(self.repo_id, self.revision)
        self._file_done = 0

    @property
    def status(self) -> PullStatus:
        with self._lock:
            return self._status

    @property
    def partial_dir(self) -> Path:
        return self.models_dir / PARTIAL_DIR / self.repo_id.replace("/", "--")

    def cancel(self) -> None:
        self._cancelled.set()

    def run(self) -> Path:
        try:
            path = self._run()
        except PullCancelled as exc:
            self._update(state="cancelled", message=str(exc))
            raise
        except DownloadError as exc:
            self._update(state="failed", message=str(exc))
            raise
        except KeyboardInterrupt:
            self._update(state="cancelled", message=self._kept_message("interrupted"))
            raise
        self._update(state="done", path=str(path), name=self.repo_id, message=f"{self.repo_id} is at {path}")
        return path

    # -- the steps ------------------------------------------------------------------------------

    def _run(self) -> Path:
        from huggingface_hub import HfApi

        self._update(state="listing")
        api = HfApi(endpoint=self.endpoint)
        commit_sha, entries = self._call_hub(lambda: self._listing(api))
        files, gguf = select_files(entries, self.quant, self.repo_id)
        target = self.models_dir / self.repo_id
        if (target / files[0].path if gguf else target).exists():
            self._update(files=tuple(f.path for f in files))
            return target / files[0].path if gguf else target
        self._update(
            state="downloading", files=tuple(f.path for f in files), total_bytes=sum(f.size for f in files)
        )
        for remote in files:
            self._download(remote, commit_sha)
        self._install(files, target, gguf)
        return target / files[0].path if gguf else target

    def _listing(self, api: Any) -> tuple[str, list[RemoteFile]]:
        from huggingface_hub.hf_api import RepoFile

        info = api.repo_info(self.repo_id, revision=self.revision)
        tree = api.list_repo_tree(self.repo_id, revision=info.sha, recursive=True)
        entries = [
            RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None, e.blob_id) for e in tree if isinstance(e, RepoFile)
        ]
        return info.sha, entries

    def _download(self, remote: RemoteFile, commit_sha: str) -> None:
        """One file into the partial directory: skipped if already there and intact, else
        continued from its ``.part`` (named after the file's hash, so a part of another version
        is never continued)."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        self._check_cancelled()
        self._file_done = 0
        self._update(current_file=remote.path, file_done=0, file_bytes=remote.size)
        local = self.partial_dir / remote.path
        if local.is_file():
            try:
                verify(local, remote)
                self._count_file(remote)
                return
            except DownloadError:
                pass  # from an older revision: fetch it again
        url = hf_hub_url(self.repo_id, remote.path, revision=commit_sha, endpoint=self.endpoint)
        meta = self._call_hub(lambda: get_hf_file_metadata(url, endpoint=self.endpoint))
        part = local.with_name(f"{local.name}.{remote.sha256 or remote.blob_id}.part")
        part.parent.mkdir(parents=True, exist_ok=True)
        done = part.stat().st_size if part.is_file() else 0
        if done > remote.size:
            part.unlink()
            done = 0
        if done:
            self._advance(done)
        with open(part, "ab") as out:
            self._call_hub(
                lambda: http_get(
                    meta.location,
                    out,
                    resume_size=done,
                    headers=build_hf_headers(),
                    expected_size=remote.size,
                    displayed_filename=remote.path,
                    tqdm_class=self._file_bar,
                )
            )
        verify(part, remote)
        part.replace(local)
        self._count_file(remote)

    def _count_file(self, remote: RemoteFile) -> None:
        with self._lock:
            done = self._status.done_bytes - self._file_done + remote.size
            self._status = replace(self._status, done_bytes=done, file_done=remote.size)

    def _install(self, files: list[RemoteFile], target: Path, gguf: bool) -> None:
        for stale in self.partial_dir.rglob("*.part"):
            stale.unlink()
        if gguf:
            # The first part last: the inventory sees a split model only once every part is in.
            target.mkdir(parents=True, exist_ok=True)
            for remote in sorted(files, key=lambda f: f.path == files[0].path):
                (self.partial_dir / remote.path).replace(target / remote.path)
            shutil.rmtree(self.partial_dir, ignore_errors=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            commit(self.partial_dir, target)
        if not any((self.models_dir / PARTIAL_DIR).iterdir()):
            (self.models_dir / PARTIAL_DIR).rmdir()

    # -- progress, cancel and errors ------------------------------------------------------------

    def _file_bar(self, **kwargs: Any) -> _FileBar:
        return _FileBar(self)

    def _advance(self, n: int) -> None:
        self._check_cancelled()
        self._file_done += n
        with self._lock:
            self._status = status = replace(
                self._status, done_bytes=self._status.done_bytes + n, file_done=self._file_done
            )
        if self._on_progress is not None:
            self._on_progress(status)

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise PullCancelled(self._kept_message("cancelled"))

    def _kept_message(self, what: str) -> str:
        return f"pull of {self.repo_id} {what}; the partial download in {self.partial_dir} is kept, pull again to continue"

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)
            status = self._status
        if self._on_progress is not None:
            self._on_progress(status)

    def _call_hub(self, call: Callable[[], Any]) -> Any:
        """``call()``, with the hub's and the disk's failures turned into ``DownloadError``s."""
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = self.endpoint or "the Hugging Face hub"
        try:
            return call()
        except RepositoryNotFoundError:
            raise _not_found(f"repository {self.repo_id} not found on {where} (or it is private)") from None
        except RevisionNotFoundError:
            raise _not_found(f"revision {self.revision!r} of {self.repo_id} not found on {where}") from None
        except EntryNotFoundError as exc:
            raise _not_found(f"{self.repo_id}: file not found on {where}: {exc}") from None
        except HfHubHTTPError as exc:
            raise DownloadError(f"{where} refused: {exc}") from None
        except LocalEntryNotFoundError as exc:
            raise DownloadError(f"cannot reach {where}: {exc.__cause__ or exc}") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise _disk_full(f"{self._kept_message('stopped')}: cannot write: {exc.strerror}") from None
            raise DownloadError(f"{self._kept_message('failed')}: {exc}") from None
        except Exception as exc:
            if _is_network_error(exc):
                raise DownloadError(f"network failure talking to {where}: {exc}; pull again to continue") from None
            raise


class _FileBar:
    """What ``http_get`` takes for a progress bar: counts bytes into the pull, and is where a
    cancel takes effect (raised inside the transfer loop; the ``.part`` file keeps what came)."""

    def __init__(self, pull: Pull) -> None:
        self._pull = pull

    def __enter__(self) -> _FileBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int | float | None = 1) -> None:
        self._pull._advance(int(n or 0))

    def close(self) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass


def select_files(entries: list[RemoteFile], quant: str | None, repo_id: str) -> tuple[list[RemoteFile], bool]:
    """The files to fetch and whether they are a GGUF model.

    A repository with safetensors gives its top-level model, config and tokenizer files; one with
    GGUF files gives the parts of one quantization. ``DownloadError`` when there is no model, or
    the quantization asked for (or, among several, the default) is not there.
    """
    if any(e.path.endswith(".safetensors") and "/" not in e.path for e in entries) and quant is None:
        return [e for e in entries if _MODEL_FILE.match(e.path)], False
    ggufs = [e for e in entries if e.path.endswith(".gguf") and not Path(e.path).name.lower().startswith("mmproj")]
    if not ggufs:
        if quant is not None:
            raise _not_found(f"{repo_id} has no GGUF files (--quant chooses among them)")
        raise _not_found(f"{repo_id} has no safetensors or GGUF model files")
    quants = sorted({q for e in ggufs if (q := gguf_quant(e.path))})
    wanted = quant or (quants[0] if len(quants) <= 1 else DEFAULT_QUANT)
    chosen = [e for e in ggufs if (gguf_quant(e.path) or "").upper() == wanted.upper()] if quants else ggufs
    if not chosen:
        choose = "choose one with --quant" if quant is None else f"no {quant} file"
        raise _not_found(f"{repo_id}: {choose} (available: {', '.join(quants)})")
    # The first part of a split file first: it names the model.
    return sorted(chosen, key=lambda e: e.path), True


def gguf_quant(filename: str) -> str | None:
    """The quantization a GGUF file's name states (``Q4_K_M``, ``IQ4_XS``, ``F16``), if any."""
    stem = _SPLIT.sub("", Path(filename).name).removesuffix(".gguf")
    found = _QUANT.findall(stem)
    return found[-1].upper() if found else None


def verify(local: Path, remote: RemoteFile) -> None:
    """Refuse a file whose size or hash is not the hub's: it is deleted (the next pull fetches it
    again) and ``DownloadError`` names it."""
    size = local.stat().st_size
    digest = hashlib.sha256() if remote.sha256 else hashlib.sha1(f"blob {size}\0".encode())
    with open(local, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if size == remote.size and digest.hexdigest() == (remote.sha256 or remote.blob_id):
        return
    local.unlink(missing_ok=True)
    raise DownloadError(
        f"{remote.path}: corrupt download (its {'sha256' if remote.sha256 else 'git hash'} is not the hub's); "
        "the file was deleted, pull again"
    )


def _is_network_error(exc: Exception) -> bool:
    # huggingface_hub's HTTP client errors (httpx's), without importing its internals here.
    return any(cls.__name__ in ("ConnectError", "TimeoutException", "RemoteProtocolError", "ReadError", "NetworkError")
               for cls in type(exc).__mro__)


def _not_found(message: str) -> DownloadError:
    error = DownloadError(message)
    error.status = 404
    return error


def _disk_full(message: str) -> DownloadError:
    error = DownloadError(message)
    error.status = 507
    return error
