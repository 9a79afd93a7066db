"""Publishing files safely, shared by the owner's and the auditor's commands: a file appears
complete or not at all, never over an existing one unless asked, and temporary files are removed
on every path.

Key pairs are published with hard links from a private temporary folder: ``link`` fails when
the name exists, so two concurrent ``keygen`` runs into one folder can never leave a private key
next to another run's public key while reporting success (the loser removes what it linked and
fails)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "PublishError",
    "UnreadableFile",
    "output_problem",
    "publish_exclusive",
    "read_regular",
    "write_atomic",
]


class PublishError(OSError):
    """A file could not be published (the name exists, or the folder is not writable)."""


class UnreadableFile(ValueError):
    """A file that is missing, not a regular file, a symbolic link, empty or over its limit."""


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, refused (:class:`UnreadableFile`) beyond
    ``limit`` bytes. Opened without following a final symbolic link and without blocking; only a
    regular file is read (a FIFO, a device or ``/dev/zero`` would block or never end; a link in
    a proof folder could point at the reader's own files); the read itself is capped too, in case
    the file grows while being read."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnreadableFile(f"{path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableFile(
                f"{path} is a symbolic link; only regular files are read"
            ) from None
        if exc.errno == errno.EISDIR:
            raise UnreadableFile(f"{path} is a folder, not a file") from None
        raise UnreadableFile(f"cannot read {path}: {exc.strerror}") from None
    parts: list[bytes] = []
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UnreadableFile(f"{path} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(f"{path} is not a regular file (a FIFO, socket or device)")
        if info.st_size > limit:
            raise UnreadableFile(f"{path} is {info.st_size} bytes, over the {limit}-byte limit")
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise UnreadableFile(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(parts)
    if len(data) > limit:
        raise UnreadableFile(f"{path} is over the {limit}-byte limit")
    if not data:
        raise UnreadableFile(f"{path} is empty")
    return data


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def output_problem(
    path: Path, *, inputs: Sequence[Path | None] = (), folder: bool = False
) -> str | None:
    """Why ``path`` cannot take a command's output, or ``None``. An output is never an input
    (or inside an input folder, or one of the input files under another name), never a symbolic
    link, a file where a folder is wanted or the other way round, and its parent must be a
    writable folder. Checked before the work starts, so a bad output is exit 2 at once."""
    given = [p for p in inputs if p is not None]
    for source in given:
        if _same(path, source):
            return f"{path} is one of the command's inputs; refusing to overwrite it"
        if os.path.isdir(source) and os.path.realpath(path).startswith(
            os.path.realpath(source) + os.sep
        ):
            return f"{path} is inside the input folder {source}; refusing to write there"
    if os.path.islink(path):
        return f"{path} is a symbolic link; refusing to write through it"
    if folder:
        if os.path.exists(path) and not os.path.isdir(path):
            return f"{path} exists and is not a folder"
    elif os.path.isdir(path):
        return f"{path} is a folder, not a file"
    elif os.path.exists(path) and not os.path.isfile(path):
        return f"{path} is not a regular file"
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{parent} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


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
