"""The sandbox's child process: runs onnxruntime sessions for the parent over a pipe.

Started as a script (``python -I _worker.py MAX_MEMORY CPU_SECONDS``) so that it imports nothing
of the auditor: its hard limits (address space, CPU time, no core dumps) are set before
onnxruntime is imported or any model is read. Requests and answers are framed messages on
stdin/stdout (a JSON header, then raw array bytes); nothing is pickled in either direction.

Protocol (one header per line of framing: 8-byte big-endian length, then that many bytes):

* ``{"op": "load", "threads": n|null, "providers": [...], "bytes": k}`` + k model bytes ->
  ``{"ok": true, "id": i, "input": [name, shape], "outputs": [...], "providers": [...]}``
* ``{"op": "run", "id": i, "outputs": [...], "dtype": "float32", "shape": [...]}`` + the
  array's bytes -> ``{"ok": true, "arrays": [[dtype, shape], ...]}`` + their bytes in order
* ``{"op": "drop", "ids": [...]}`` -> ``{"ok": true}``
* any failure -> ``{"ok": false, "error": "one line"}`` (the session stays usable)."""

from __future__ import annotations

import json
import resource
import struct
import sys
from typing import Any, BinaryIO

_LENGTH = struct.Struct(">Q")


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the auditor's process dies, even mid-run."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the closed pipe still ends an idle worker


def _limit(max_memory: int, cpu_seconds: int) -> None:
    _die_with_parent()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for which, soft, extra in (
        (resource.RLIMIT_AS, max_memory, 0),
        (resource.RLIMIT_CPU, cpu_seconds, 5),
    ):
        if soft <= 0:
            continue
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:  # never above what the parent was given
            soft, extra = min(soft, hard), max(0, min(extra, hard - soft))
        resource.setrlimit(which, (soft, soft + extra))


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    parts = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _send(stream: BinaryIO, header: dict[str, Any], blobs: list[bytes] = []) -> None:  # noqa: B006
    data = json.dumps(header).encode()
    stream.write(_LENGTH.pack(len(data)) + data)
    for blob in blobs:
        stream.write(blob)
    stream.flush()


def main() -> None:
    _limit(int(sys.argv[1]), int(sys.argv[2]))
    import numpy as np
    import onnxruntime as ort

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing a library prints may corrupt the protocol
    sessions: dict[int, Any] = {}
    counter = 0
    while True:
        try:
            (size,) = _LENGTH.unpack(_read_exact(stdin, _LENGTH.size))
            header = json.loads(_read_exact(stdin, size))
        except EOFError:
            return
        op = header.get("op")
        try:
            if op == "load":
                raw = _read_exact(stdin, int(header["bytes"]))
                opts = ort.SessionOptions()
                opts.log_severity_level = 3
                if header.get("threads") is not None:
                    opts.intra_op_num_threads = int(header["threads"])
                    opts.inter_op_num_threads = 1
                session = ort.InferenceSession(
                    raw, sess_options=opts, providers=header["providers"]
                )
                counter += 1
                sessions[counter] = session
                inputs = session.get_inputs()
                _send(
                    stdout,
                    {
                        "ok": True,
                        "id": counter,
                        "inputs": [
                            [i.name, [d if isinstance(d, int) else None for d in i.shape]]
                            for i in inputs
                        ],
                        "outputs": [o.name for o in session.get_outputs()],
                        "providers": list(session.get_providers()),
                    },
                )
            elif op == "run":
                shape = [int(s) for s in header["shape"]]
                count = int(np.prod(shape, dtype=np.int64))
                data = _read_exact(stdin, count * 4)
                x = np.frombuffer(data, dtype=np.float32).reshape(shape)
                session = sessions[int(header["id"])]
                name = session.get_inputs()[0].name
                outs = session.run(list(header["outputs"]), {name: x})
                arrays = [np.ascontiguousarray(o, dtype=np.float32) for o in outs]
                _send(
                    stdout,
                    {"ok": True, "arrays": [list(a.shape) for a in arrays]},
                    [a.tobytes() for a in arrays],
                )
            elif op == "drop":
                for key in header.get("ids", []):
                    sessions.pop(int(key), None)
                _send(stdout, {"ok": True})
            else:
                _send(stdout, {"ok": False, "error": f"unknown request {op!r}"})
        except MemoryError:
            _send(stdout, {"ok": False, "error": "out of memory", "limit": "memory"})
        except Exception as exc:  # onnxruntime's Fail/InvalidArgument/RuntimeException types
            text = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
            full = str(exc).lower()
            limit = "memory" if "alloc" in full or "bfc_arena" in full else None
            _send(stdout, {"ok": False, "error": text, "limit": limit})


if __name__ == "__main__":
    main()
