"""Small pieces every stage of the study shares: folders, the training recipe per data set and
architecture (the one ``prune train`` uses), atomic writes, memory readings, machine facts."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune.train import DEFAULT_EPOCHS, DEFAULT_HIDDEN, TrainConfig

__all__ = [
    "StudyError",
    "StudyPaths",
    "atomic_folder",
    "machine",
    "peak_rss_mb",
    "read_json",
    "train_config",
    "write_json",
]


class StudyError(Exception):
    """An expected failure of the harness; the CLI prints it as one line and exits 2."""


@dataclass(frozen=True, kw_only=True)
class StudyPaths:
    """``work``: cached artifacts (models, logs; large, git-ignored). ``results``: one JSON per
    cell plus the CSV (small, committed). ``docs``: BENCHMARKS.md and ``img/``."""

    work: Path
    results: Path
    docs: Path

    @property
    def cells(self) -> Path:
        return self.results / "cells"


def train_config(dataset: str, arch: str, seed: int) -> TrainConfig:
    """Exactly what ``prune train --dataset D --arch A --seed S`` trains (see prune/cli/_train)."""
    if dataset not in DEFAULT_HIDDEN:
        raise StudyError(f"unknown data set {dataset!r}")
    hidden: tuple[int, ...]
    if arch == "mlp":
        hidden = DEFAULT_HIDDEN[dataset]
        return TrainConfig(arch="mlp", hidden=hidden, epochs=DEFAULT_EPOCHS[dataset], seed=seed)
    if arch == "cnn":
        hidden = (64,) if dataset == "digits" else (128,)
        return TrainConfig(arch="cnn", hidden=hidden, epochs=DEFAULT_EPOCHS[dataset], seed=seed)
    raise StudyError(f"unknown architecture {arch!r}")


def write_json(path: Path, doc: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(f"cannot read {path}: {exc}") from exc


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to ``final`` on success, delete on failure."""
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _git() -> dict[str, Any]:
    """The commit the code ran from, and how many files of the measured packages differed from
    it (uncommitted work of the other engineers in the shared tree)."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "prune", "audit", "benchmarks/study"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "uncommitted_files": None}
    return {"commit": commit, "uncommitted_files": len(dirty)}


def machine() -> dict[str, Any]:
    """Facts that make a timing interpretable: CPU count, load, versions."""
    import numpy
    import onnxruntime
    import torch

    return {
        "git": _git(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
