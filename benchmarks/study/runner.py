"""Run a config: build missing artifacts, then every cell without a result, each in its own
process, one at a time. Resumable: a cell whose result file exists is skipped (failed cells too,
unless ``retry_failed``), so an interrupted run continues where it stopped.

A cell's process writes its result atomically; if it crashes, is killed for time, or its
artifacts cannot be built, the runner writes a ``failed`` result with a one-line reason so the
summary shows the gap instead of hiding it.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from audit.errors import AuditError
from audit.mia._execution import Tasks, make_backend
from benchmarks.study.artifacts import ArtifactKey
from benchmarks.study.common import StudyError, StudyPaths, read_json, write_json
from benchmarks.study.methods import needed_artifacts
from benchmarks.study.plan import HARNESS_VERSION, Cell

__all__ = ["REPO", "RunOptions", "failed_doc", "run_cells", "select"]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """``backend``/``address``/``jobs``: where cells run (:mod:`audit.mia._execution`); ``local``
    with one job is the original one-cell-at-a-time loop (the timings in the results assume
    it). On a cluster each cell is still its own process, started on a worker, which must see
    this repository at the same path (the cells share ``paths.work``)."""

    threads: int = 1
    timeout_s: float = 3600.0
    retry_failed: bool = False
    backend: str = "local"
    address: str | None = None
    jobs: int = 1


def select(cells: Sequence[Cell], patterns: Sequence[str]) -> list[Cell]:
    """Cells whose ``name()`` matches any glob in ``patterns`` (all cells when none)."""
    if not patterns:
        return list(cells)
    return [c for c in cells if any(fnmatch.fnmatch(c.name(), p) for p in patterns)]


def failed_doc(cell: Cell, error: str) -> dict[str, object]:
    return {
        "version": 1,
        "harness": HARNESS_VERSION,
        "key": cell.key(),
        "cell": cell.to_json(),
        "status": "failed",
        "error": error.strip().splitlines()[-1][:500] if error.strip() else "unknown error",
    }


def _python(args: list[str], timeout_s: float) -> tuple[bool, str]:
    """Run ``python -m benchmarks.study ARGS`` from the repository root; (ok, last stderr line)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.study", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s:.0f} s"
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    return proc.returncode == 0, (lines[-1] if lines else f"exit status {proc.returncode}")


def _ensure(
    key: ArtifactKey, paths: StudyPaths, options: RunOptions, log: Callable[[str], None]
) -> str | None:
    if key.ready(paths.work):
        return None
    log(f"  building {key.kind} {key.folder(paths.work).name}")
    start = time.perf_counter()
    spec = json.dumps(
        {
            "kind": key.kind,
            "dataset": key.dataset,
            "arch": key.arch,
            "seed": key.seed,
            "setting": key.setting,
        }
    )
    ok, message = _python(
        ["artifact", "--spec", spec, "--work", str(paths.work), "--threads", str(options.threads)],
        options.timeout_s,
    )
    if not ok:
        return f"building {key.kind} failed: {message}"
    log(f"  built {key.kind} in {time.perf_counter() - start:.1f} s")
    return None


@dataclass(frozen=True)
class _CellBatch:
    """What every cell task shares: the cells' specs and result paths, and the options."""

    specs: tuple[str, ...]
    outs: tuple[str, ...]
    work: str
    threads: int
    timeout_s: float


def _cell_task(batch: _CellBatch, k: int) -> tuple[bool, str, float]:
    """Run cell ``k`` of ``batch`` as its own process on this worker: (ok, message, seconds)."""
    start = time.perf_counter()
    args = ["cell", "--spec", batch.specs[k], "--work", batch.work, "--out", batch.outs[k]]
    ok, message = _python([*args, "--threads", str(batch.threads)], batch.timeout_s)
    return ok and Path(batch.outs[k]).is_file(), message, time.perf_counter() - start


def run_cells(
    cells: Sequence[Cell], paths: StudyPaths, options: RunOptions, *, log: Callable[[str], None]
) -> dict[str, int]:
    """Run every cell without a result; return counts of ``ran``, ``skipped``, ``failed``.
    Artifacts are built here first, one at a time; the cells then run on ``options.backend``."""
    counts = {"ran": 0, "skipped": 0, "failed": 0}
    todo: list[tuple[Cell, Path]] = []
    for i, cell in enumerate(cells, 1):
        out = paths.cells / f"{cell.key()}.json"
        if out.is_file():
            status = read_json(out).get("status")
            if status == "ok" or not options.retry_failed:
                counts["skipped"] += 1
                continue
        log(f"[{i}/{len(cells)}] {cell.name()}")
        error = None
        for key in needed_artifacts(cell):
            error = _ensure(key, paths, options, log)
            if error:
                break
        if error is None:
            todo.append((cell, out))
            continue
        write_json(out, failed_doc(cell, error))
        counts["failed"] += 1
        log(f"  FAILED: {error}")
    if not todo:
        return counts

    def record(k: int, result: tuple[bool, str, float]) -> None:
        cell, out = todo[k]
        ok, message, seconds = result
        if ok:
            counts["ran"] += 1
            log(f"  ok in {seconds:.1f} s: {cell.name()}")
            return
        write_json(out, failed_doc(cell, message))
        counts["failed"] += 1
        log(f"  FAILED: {cell.name()}: {message}")

    batch = _CellBatch(
        specs=tuple(json.dumps(cell.to_json()) for cell, _ in todo),
        outs=tuple(str(out) for _, out in todo),
        work=str(paths.work),
        threads=options.threads,
        timeout_s=options.timeout_s,
    )
    tasks = Tasks(_cell_task, batch, len(todo), what="study cell", cpus=options.threads)
    if options.backend == "local" and options.jobs == 1:
        for k in range(len(todo)):
            log(f"  running {todo[k][0].name()}")
            record(k, _cell_task(batch, k))
        return counts
    if options.backend in ("ray", "dask"):
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import it
    backend = make_backend("threading" if options.backend == "local" else options.backend)
    log(f"  {len(todo)} cells on the {options.backend} backend")
    try:
        backend.map(tasks, jobs=options.jobs, address=options.address, on_result=record)
    except AuditError as exc:
        raise StudyError(str(exc)) from exc
    return counts
