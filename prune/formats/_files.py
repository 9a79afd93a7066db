"""Publishing files safely, shared by the owner's and the auditor's commands: a file appears
complete or not at all, never over an existing one unless asked, and temporary files are removed
on every path.

Key pairs are published with hard links from a private temporary folder: ``link`` fails when
the name exists, so two concurrent ``keygen`` runs into one folder can never leave a private key
next to another run's public key while reporting success (the loser removes what it linked and
fails)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PublishError", "publish_exclusive", "write_atomic"]


class PublishError(OSError):
    """A file could not be published (the name exists, or the folder is not writable)."""


def _private_tmpdir(folder: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=".publish-", dir=folder))  # mode 0700


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename (replacing ``path``
    if it exists, never half-written); the temporary file is removed on every path."""
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_exclusive(folder: Path, files: Sequence[tuple[str, bytes, int]]) -> list[Path]:
    """Create every ``(name, data, mode)`` in ``folder`` (made 0700 if missing), all or none:
    refused (:class:`PublishError`) if any name exists, including when a concurrent run
    publishes first. Written in a private temporary folder, then hard-linked into place."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, _, _ in files:
        if os.path.lexists(folder / name):
            raise PublishError(f"{folder / name} already exists; refusing to overwrite it")
    tmp = _private_tmpdir(folder)
    linked: list[Path] = []
    try:
        for name, data, mode in files:
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp / name, mode)
        for name, _, _ in files:
            try:
                os.link(tmp / name, folder / name)
            except FileExistsError:
                raise PublishError(
                    f"{folder / name} already exists (another run wrote it); refusing to "
                    "overwrite it"
                ) from None
            linked.append(folder / name)
    except BaseException:
        for path in linked:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return linked
