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

from benchmarks.study.artifacts import ArtifactKey
from benchmarks.study.common import StudyPaths, read_json, write_json
from benchmarks.study.methods import needed_artifacts
from benchmarks.study.plan import HARNESS_VERSION, Cell

__all__ = ["REPO", "RunOptions", "failed_doc", "run_cells", "select"]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    threads: int = 1
    timeout_s: float = 3600.0
    retry_failed: bool = False


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


def run_cells(
    cells: Sequence[Cell], paths: StudyPaths, options: RunOptions, *, log: Callable[[str], None]
) -> dict[str, int]:
    """Run every cell without a result; return counts of ``ran``, ``skipped``, ``failed``."""
    counts = {"ran": 0, "skipped": 0, "failed": 0}
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
            start = time.perf_counter()
            ok, message = _python(
                [
                    "cell",
                    "--spec",
                    json.dumps(cell.to_json()),
                    "--work",
                    str(paths.work),
                    "--out",
                    str(out),
                    "--threads",
                    str(options.threads),
                ],
                options.timeout_s,
            )
            if ok and out.is_file():
                counts["ran"] += 1
                log(f"  ok in {time.perf_counter() - start:.1f} s")
                continue
            error = message
        write_json(out, failed_doc(cell, error))
        counts["failed"] += 1
        log(f"  FAILED: {error}")
    return counts
