"""The parent side of the sandbox: one long-lived worker process per command, with hard limits,
serving many inference requests over a pipe.

Resource policy (docs/VERIFY.md, "Limits and resource policy"):

* the worker's address space is capped (``RLIMIT_AS``, ``--max-memory``) and its total CPU time
  too (``RLIMIT_CPU``); every request has a wall-clock deadline (``--timeout``), after which the
  worker is killed;
* a limit that is hit is a :class:`SandboxLimitError`, a
  :class:`~audit.errors.VerificationError`: the check that ran the model fails with one line;
  every later request to a session of the dead worker fails with the same line, and a model
  loaded afterwards gets a fresh worker;
* answers are bounded before they are read (the parent never allocates what the child claims
  without checking it against the sizes it asked for).

The parent never unpickles anything from the child: headers are JSON, arrays raw float32."""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError, VerificationError

__all__ = [
    "ModelRunError",
    "Sandbox",
    "SandboxLimitError",
    "SandboxLimits",
    "configure",
    "current",
    "sandboxed",
]

MiB = 1 << 20
GiB = 1 << 30
_LENGTH = struct.Struct(">Q")
_WORKER = Path(__file__).with_name("_worker.py")
_HEADER_LIMIT = 1 * MiB


class ModelRunError(VerificationError):
    """onnxruntime refused to load or run the owner's model (the model's fault: a failed check)."""


class SandboxLimitError(ModelRunError):
    """The owner's model hit one of the sandbox's hard limits (memory, CPU time, wall time)."""


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Hard limits of the worker. ``max_memory``: its address space in bytes (on CUDA, where the
    driver reserves huge virtual ranges, its resident size is watched instead); ``timeout``:
    wall-clock seconds per request (load or run); ``cpu_seconds``: CPU time of the worker over
    the whole command. ``tensor_budget`` (derived): bytes the declared values of one call may
    take, a quarter of ``max_memory``, so onnxruntime's arena and copies fit beside them."""

    max_memory: int = 4 * GiB
    timeout: float = 60.0
    cpu_seconds: int = 900

    def __post_init__(self) -> None:
        if self.max_memory < 512 * MiB:
            raise InputError("--max-memory must be at least 512 MiB")
        if not 0 < self.timeout <= 86_400 or self.cpu_seconds < 1:
            raise InputError("--timeout must be in (0, 86400] seconds")

    @property
    def tensor_budget(self) -> int:
        return self.max_memory // 4


class _Worker:
    def __init__(self, limits: SandboxLimits, *, watch_rss: bool) -> None:
        self.limits = limits
        self.watch_rss = watch_rss
        self.dead: str | None = None
        address_space = 0 if watch_rss else limits.max_memory
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", str(_WORKER), str(address_space), str(limits.cpu_seconds)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise InputError(f"cannot start the model sandbox: {exc.strerror}") from exc
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin: IO[bytes] = self.proc.stdin
        self._stdout: IO[bytes] = self.proc.stdout
        self.pending_drops: list[int] = []

    def kill(self, reason: str) -> None:
        if self.dead is None:
            self.dead = reason
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
        self.proc.wait()
        for stream in (self._stdin, self._stdout):
            with suppress(OSError):
                stream.close()

    def _rss(self) -> int:
        try:
            text = Path(f"/proc/{self.proc.pid}/statm").read_text()
        except OSError:
            return 0
        return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _death_reason(self) -> str:
        code = self.proc.wait()
        if code == -signal.SIGXCPU or code == -signal.SIGKILL:
            return f"the model exceeded the sandbox's {self.limits.cpu_seconds} s CPU-time limit"
        if code < 0:
            name = signal.Signals(-code).name
            return (
                f"the model worker died ({name}); the model exceeded the sandbox's limits "
                f"(memory {self.limits.max_memory // MiB} MiB)"
            )
        return f"the model worker exited unexpectedly (status {code})"

    def _read(self, n: int, deadline: float) -> bytes:
        parts: list[bytes] = []
        fd = self._stdout.fileno()
        while n:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill(
                    f"the model exceeded the sandbox's {self.limits.timeout:g} s wall-clock limit"
                )
                raise SandboxLimitError(str(self.dead))
            ready, _, _ = select.select([fd], [], [], min(left, 0.25))
            if self.watch_rss and self._rss() > self.limits.max_memory:
                self.kill(
                    f"the model exceeded the sandbox's {self.limits.max_memory // MiB} MiB "
                    "memory limit"
                )
                raise SandboxLimitError(str(self.dead))
            if not ready:
                continue
            chunk = os.read(fd, min(n, 1 << 22))
            if not chunk:
                self.kill(self._death_reason())
                raise SandboxLimitError(str(self.dead))
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def request(
        self, header: dict[str, Any], body: Sequence[bytes | memoryview] = ()
    ) -> tuple[dict[str, Any], float]:
        """Send one request; the answer's header and the deadline its blobs must meet."""
        if self.dead is not None:
            raise SandboxLimitError(self.dead)
        if self.pending_drops:
            drops, self.pending_drops = self.pending_drops, []
            self.request({"op": "drop", "ids": drops})
        data = json.dumps(header).encode()
        try:
            self._stdin.write(_LENGTH.pack(len(data)) + data)
            for blob in body:
                self._stdin.write(blob)
            self._stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill(self._death_reason())
            raise SandboxLimitError(str(self.dead)) from None
        deadline = time.monotonic() + self.limits.timeout
        (size,) = _LENGTH.unpack(self._read(_LENGTH.size, deadline))
        if size > _HEADER_LIMIT:
            self.kill("the model worker sent a malformed answer")
            raise SandboxLimitError(str(self.dead))
        answer = json.loads(self._read(size, deadline))
        if not isinstance(answer, dict):
            self.kill("the model worker sent a malformed answer")
            raise SandboxLimitError(str(self.dead))
        if not answer.get("ok"):
            message = str(answer.get("error", "failed"))[:200]
            if answer.get("limit") == "memory":
                raise SandboxLimitError(
                    f"the model exceeded the sandbox's {self.limits.max_memory // MiB} MiB "
                    f"memory limit ({message})"
                )
            raise ModelRunError(message)
        return answer, deadline

    def read_arrays(
        self, shapes: Any, deadline: float, max_bytes: int
    ) -> list[NDArray[np.float32]]:
        out: list[NDArray[np.float32]] = []
        if not isinstance(shapes, list):
            raise ModelRunError("the model worker sent a malformed answer")
        total = 0
        dims: list[tuple[int, ...]] = []
        for shape in shapes:
            if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                self.kill("the model worker sent a malformed answer")
                raise SandboxLimitError(str(self.dead))
            dims.append(tuple(shape))
            total += 4 * int(np.prod(shape, dtype=np.float64))
        if total > max_bytes:
            self.kill(f"the model's outputs take {total} bytes, over the {max_bytes}-byte budget")
            raise SandboxLimitError(str(self.dead))
        for shape in dims:
            count = int(np.prod(shape, dtype=np.int64))
            raw = self._read(4 * count, deadline)
            out.append(np.frombuffer(raw, dtype=np.float32).reshape(shape).copy())
        return out


class Sandbox:
    """Runs owner models in one worker process (started on the first load, restarted for a new
    load after a limit killed it). Thread-safe: requests are serialised."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._lock = threading.RLock()
        self._worker: _Worker | None = None

    def _live(self, *, watch_rss: bool) -> _Worker:
        if self._worker is None or self._worker.dead is not None:
            self._worker = _Worker(self.limits, watch_rss=watch_rss)
        elif watch_rss:
            self._worker.watch_rss = True
        return self._worker

    def load(
        self, raw: bytes, *, providers: list[Any], threads: int | None
    ) -> tuple[_Worker, dict[str, Any]]:
        watch = any(
            (p[0] if isinstance(p, tuple) else p) != "CPUExecutionProvider" for p in providers
        )
        with self._lock:
            worker = self._live(watch_rss=watch)
            answer, _ = worker.request(
                {
                    "op": "load",
                    "bytes": len(raw),
                    "threads": threads,
                    "providers": [list(p) if isinstance(p, tuple) else p for p in providers],
                },
                [raw],
            )
        return worker, answer

    def run(
        self,
        worker: _Worker,
        session: int,
        x: NDArray[np.float32],
        outputs: Sequence[str],
        *,
        max_bytes: int,
    ) -> list[NDArray[np.float32]]:
        with self._lock:
            answer, deadline = worker.request(
                {"op": "run", "id": session, "outputs": list(outputs), "shape": list(x.shape)},
                [np.ascontiguousarray(x, dtype=np.float32).tobytes()],
            )
            return worker.read_arrays(answer.get("arrays"), deadline, max_bytes)

    def drop(self, worker: _Worker, session: int) -> None:
        """Forget a session (called from finalizers: no I/O here, sent with the next request)."""
        worker.pending_drops.append(session)

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.kill("the sandbox was closed")
                self._worker = None


_current: Sandbox | None = None
_current_lock = threading.Lock()


def current() -> Sandbox:
    """The sandbox model runs go through (one per process; :func:`sandboxed` scopes it)."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Sandbox()
        return _current


def configure(limits: SandboxLimits) -> Sandbox:
    """Replace the process's sandbox by one with ``limits`` (the old worker is stopped)."""
    global _current
    with _current_lock:
        old, _current = _current, Sandbox(limits)
    if old is not None:
        old.close()
    return _current


@contextmanager
def sandboxed(limits: SandboxLimits) -> Iterator[Sandbox]:
    """One command's sandbox: configured on entry, its worker stopped on exit."""
    box = configure(limits)
    try:
        yield box
    finally:
        box.close()
