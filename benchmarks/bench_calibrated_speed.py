"""Issue 13's speed target on one setting, in CPU time: the ``prune unlearn --target-policy
calibrated`` call against retraining on the retained rows with the original's recipe (the
study's reference retrain), both in this process with the same torch thread count, one thread
by default. ``prune prepare``'s one-time cost is read from the prepared artifact and reported
apart. Reads the study's cached artifacts (``python -m benchmarks.study run --config
calibrated ...`` builds them).

    python -m benchmarks.bench_calibrated_speed --dataset digits --setting random-500 --seed 0

CPU time (``time.process_time``) is what a shared machine can measure; wall seconds are
recorded too, with the load average. A one-point request runs first (not timed): the study's
cells time the first call of a fresh process, which includes lazy imports."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
import numpy as np
import torch

from benchmarks.study.artifacts import (
    forget_indices,
    load_original,
    load_prepared_references,
)
from prune.baselines import fit, retain_indices
from prune.unlearn import unlearn

T = TypeVar("T")
WORK = Path(__file__).resolve().parent / "runs" / "calibrated"


def _timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


@click.command()
@click.option("--dataset", default="digits", show_default=True)
@click.option("--arch", default="mlp", show_default=True)
@click.option("--setting", default="random-500", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--work", type=click.Path(path_type=Path), default=WORK, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def main(
    dataset: str,
    arch: str,
    setting: str,
    seed: int,
    threads: int,
    work: Path,
    json_out: Path | None,
) -> None:
    torch.set_num_threads(threads)
    orig = load_original(work, dataset, arch, seed)
    prepared = load_prepared_references(work, orig, dataset, arch, seed)
    forget = forget_indices(setting, orig.y_train, seed)
    # warm-up: a one-point request pays the lazy imports and first-call initialisation
    # (onnx, onnxruntime, scipy) that a running owner service pays once
    unlearn(
        orig.onnx,
        orig.x_train,
        orig.y_train,
        forget_indices=forget[:1],
        prepared=prepared,
        target_policy="calibrated",
        threads=threads,
    )
    load = list(os.getloadavg())
    result, u_cpu, u_wall = _timed(
        lambda: unlearn(
            orig.onnx,
            orig.x_train,
            orig.y_train,
            forget_indices=forget,
            prepared=prepared,
            target_policy="calibrated",
            seed=seed,
            threads=threads,
        )
    )
    keep = retain_indices(forget, len(orig.y_train))
    _, r_cpu, r_wall = _timed(lambda: fit(orig.recipe, orig.x_train[keep], orig.y_train[keep]))
    summary = result.summary
    doc = {
        "version": 1,
        "type": "https://prune-audit.dev/bench/calibrated-speed/v1",
        "dataset": dataset,
        "arch": arch,
        "setting": setting,
        "seed": seed,
        "threads": threads,
        "forget": len(forget),
        "patches": int(summary["patches"]),
        "gate": result.method["gate"],
        "certified": int(summary["certified"]),
        "unlearn_cpu_s": round(u_cpu, 3),
        "unlearn_wall_s": round(u_wall, 3),
        "retrain_cpu_s": round(r_cpu, 3),
        "retrain_wall_s": round(r_wall, 3),
        "speedup_cpu": round(r_cpu / max(u_cpu, 1e-9), 2),
        "prepare_s": float(prepared.seconds),
        "test_change_points": None,
        "loadavg_start": load,
        "loadavg_end": list(os.getloadavg()),
    }
    if "test_accuracy_after" in summary:
        doc["test_change_points"] = round(
            100 * (summary["test_accuracy_after"] - summary["test_accuracy_before"]), 2
        )
    click.echo(json.dumps(doc, indent=1))
    if json_out is not None:
        json_out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    assert np.isfinite(doc["speedup_cpu"])


if __name__ == "__main__":
    main()
