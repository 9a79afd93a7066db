"""Do two Dask workers slow each other's training more than two plain processes do? The same
reference models (those of ``benchmarks/bench_cluster.py``: MLP 256-256, 12 epochs, batch 128,
10,000 Fashion-MNIST rows) trained one and two at a time in three pools kept warm side by side:

* ``plain``: ``multiprocessing`` spawn processes, the model on the main thread, nothing else in
  the process (the floor: what two trainings cost each other on this machine);
* ``loky``: the local backend's joblib workers;
* ``dask``: the dask backend's own local cluster (:data:`audit.mia._execution.QUIET_DASK`), the
  model on the worker's task thread next to its event loop.

Blocks (one pool, one or two models at once) rotate through the pools round by round, so load
from other users drifts over all three alike; a single run of ``bench_cluster.py`` measures each
backend's 1- and 2-worker runs minutes apart, and the model time of one run varies by 10-25 %
between such runs. Each task records, from inside: wall, process CPU (user + system),
the training thread's CPU (the gap to process CPU is the worker's other threads: Dask's event
loop), involuntary context switches and minor faults; the load average is recorded per block.
The same model must come out of every pool bit for bit (``identical``).

    python benchmarks/cluster_interleave.py --rounds 3 --out /tmp/cluster-interleave.json
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from audit.mia import Architecture, TrainingRecipe
from audit.mia._execution import (
    DaskBackend,
    LocalBackend,
    Tasks,
    TrainingJob,
    open_session,
    run_task,
    warm_worker,
)
from audit.mia._reference import reference_job
from prune.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = ("wall_s", "process_cpu_s", "thread_cpu_s", "user_s", "system_s", "preempted", "faults")


def probed(job: TrainingJob, k: int) -> dict[str, Any]:
    """Train model ``k`` of ``job`` (:func:`run_task`), measured from the thread that trains."""
    r0 = resource.getrusage(resource.RUSAGE_THREAD)
    start, thread0 = time.perf_counter(), time.thread_time()
    trained = run_task(job, k)
    wall, thread = time.perf_counter() - start, time.thread_time() - thread0
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    digest = hashlib.sha256()
    for name, value in sorted(trained.state.items()):
        digest.update(name.encode() + np.ascontiguousarray(value).tobytes())
    return {
        "k": k,
        "pid": os.getpid(),
        "wall_s": round(wall, 4),
        "process_cpu_s": round(trained.cpu_seconds, 4),
        "thread_cpu_s": round(thread, 4),
        "user_s": round(r1.ru_utime - r0.ru_utime, 4),
        "system_s": round(r1.ru_stime - r0.ru_stime, 4),
        "preempted": r1.ru_nivcsw - r0.ru_nivcsw,
        "faults": r1.ru_minflt - r0.ru_minflt,
        "digest": digest.hexdigest()[:16],
    }


def _picked(ks: Sequence[int], job: TrainingJob, i: int) -> dict[str, Any] | None:
    """Model ``ks[i]``; ``-1`` is no model (joblib runs a single task in the calling process:
    a second, empty one keeps the model on a worker)."""
    return probed(job, ks[i]) if ks[i] >= 0 else None


_JOB: TrainingJob | None = None


def _hold(job: TrainingJob) -> None:
    global _JOB
    _JOB = job


def _plain(k: int) -> dict[str, Any]:
    assert _JOB is not None
    return probed(_JOB, k)


def make_job(epochs: int) -> TrainingJob:
    data = load_dataset("fashion-mnist")
    x = data.x_train.reshape(len(data.x_train), -1).astype(np.float32)
    reference = np.random.default_rng(0).permutation(len(x))[10000:30000]
    return reference_job(
        x[reference],
        data.y_train[reference],
        architecture=Architecture("mlp", (256, 256), (784,), 10),
        count=16,
        recipe=TrainingRecipe(epochs=epochs),
        seed=0,
        train_size=10000,
        device="cpu",
    )


def summarise(blocks: list[dict[str, Any]], pools: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pool in pools:
        for at_once in (1, 2):
            tasks = [
                t
                for b in blocks
                if b["pool"] == pool and b["at_once"] == at_once
                for t in b["tasks"]
            ]
            if tasks:
                out[f"{pool}-{at_once}"] = {
                    "models": len(tasks),
                    **{f: round(statistics.mean(t[f] for t in tasks), 3) for f in FIELDS},
                }
    for pool in pools:
        one, two = out.get(f"{pool}-1"), out.get(f"{pool}-2")
        if one and two:
            out[f"{pool}-cpu-2-vs-1"] = round(two["process_cpu_s"] / one["process_cpu_s"], 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--pools", default="plain,loky,dask")
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster-interleave.json")
    args = parser.parse_args()

    job = make_job(args.epochs)
    pools = args.pools.split(",")
    spawn = multiprocessing.get_context("spawn").Pool(2, initializer=_hold, initargs=(job,))
    loky, dask = LocalBackend("loky"), DaskBackend()

    def run(pool: str, ks: list[int]) -> list[dict[str, Any]]:
        if pool == "plain":
            return spawn.map(_plain, ks, chunksize=1)
        backend: LocalBackend | DaskBackend = dask
        if pool == "loky":
            backend, ks = loky, ks if len(ks) > 1 else [*ks, -1]
        task: Callable[[TrainingJob, int], dict[str, Any] | None]
        task = functools.partial(_picked, ks)
        done = backend.map(Tasks(task, job, len(ks), what="model"), jobs=2, address=None)
        return [t for t in done if t is not None]

    blocks: list[dict[str, Any]] = []
    try:
        with open_session("dask", jobs=2, address=None):
            dask.map(Tasks(warm_worker, None, 2), jobs=2, address=None)
            for pool in pools:  # every worker imports torch and trains a first model, untimed
                run(pool, [0, 1])
            for r in range(args.rounds):
                for i in range(len(pools)):
                    pool = pools[(i + r) % len(pools)]
                    for at_once in (2, 1):
                        ks = [2 + (2 * r + j) % 14 for j in range(at_once)]
                        load, start = os.getloadavg()[0], time.perf_counter()
                        tasks = run(pool, ks)
                        blocks.append(
                            {
                                "round": r,
                                "pool": pool,
                                "at_once": at_once,
                                "processes": len({t["pid"] for t in tasks}),
                                "block_wall_s": round(time.perf_counter() - start, 2),
                                "load_before": round(load, 2),
                                "load_after": round(os.getloadavg()[0], 2),
                                "tasks": tasks,
                            }
                        )
                        print(json.dumps(blocks[-1]), file=sys.stderr, flush=True)
    finally:
        spawn.terminate()
    digests: dict[int, set[str]] = {}
    for block in blocks:
        for t in block["tasks"]:
            digests.setdefault(t["k"], set()).add(t["digest"])
    doc = {
        "benchmark": "cluster-interleave",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/cluster_interleave.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "summary": summarise(blocks, pools),
        "identical": all(len(d) == 1 for d in digests.values()),
        "blocks": blocks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["summary"], indent=2))
    return 0 if doc["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
