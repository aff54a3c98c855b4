"""Write a model where it will be used only once it is whole: build it in a staging directory
beside its destination, then rename (atomic on one filesystem). Whatever stops the build (an
error, Ctrl-C, a full disk, a kill) leaves at most a hidden staging directory, never a
half-written model under the real name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from opta_lmx.errors import ModelStoreError

STAGING_PREFIX = ".staging-"


@contextmanager
def staged(dst: Path, replace: bool = False) -> Iterator[Path]:
    """A fresh directory to build ``dst`` in; renamed to ``dst`` when the block ends cleanly,
    removed when it raises. ``dst`` must not exist unless ``replace``: then the old one goes
    once the new one is complete."""
    if dst.exists() and not replace:
        raise ModelStoreError(f"{dst} already exists; remove it or choose another destination")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{dst.name}-", dir=dst.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would stay on the model
    try:
        yield staging
        commit(staging, dst, replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit(staging: Path, dst: Path, replace: bool = False) -> None:
    """Put the finished ``staging`` directory in ``dst``'s place."""
    if replace and dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(staging, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, dst)


def is_staging(path: Path) -> bool:
    return path.name.startswith(STAGING_PREFIX)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
