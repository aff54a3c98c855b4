"""A Hugging Face cache laid out the way huggingface_hub writes one."""

from __future__ import annotations

import shutil
from pathlib import Path

SHA = "0123456789abcdef0123456789abcdef01234567"


def hf_cache_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """The layout huggingface_hub writes: blobs, a snapshot of symlinks, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, source in files.items():
        blob = repo / "blobs" / f"blob-{name}"
        shutil.copy(source, blob)
        (snapshot / name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return snapshot
