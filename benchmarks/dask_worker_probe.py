"""Where a Dask worker's time goes while it trains reference models: Dask's stock worker config
against the one the dask backend gives the local cluster it starts
(:data:`audit.mia._execution.QUIET_DASK`), side by side in one process, in rounds.

Each variant starts a ``LocalCluster`` of ``--workers`` single-thread worker processes, warms
every worker (torch imports, then one full model, untimed), measures the idle cluster's
background CPU for a few seconds, then trains ``--models`` reference models of
``benchmarks/bench_cluster.py`` (MLP 256-256, 12 epochs, batch 128, 10,000 Fashion-MNIST rows)
through :class:`~audit.mia._execution.DaskBackend`. Inside each task it records, from Linux's
per-thread counters:

* ``train_thread_cpu_s``: CPU of the thread that trains (Dask runs tasks on a worker thread);
* ``loop_thread_cpu_s``: CPU of the worker's event-loop thread during the task (profiler,
  ticks, monitors, heartbeats): it counts in the task's process CPU, and it needs the GIL;
* ``gil_handoffs``: voluntary context switches of the training thread (it does no I/O, so these
  are the times it gave the GIL to the event loop and waited to get it back);
* ``minor_faults``: pages the training thread faulted in (memory glibc had given back).

CPU seconds and counts hold up on a loaded machine; wall times (recorded with the load average)
do not. The models must be bit-identical across variants (``digests``).

    python benchmarks/dask_worker_probe.py            # about 3 min of CPU
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from audit.mia import Architecture, TrainingRecipe
from audit.mia._execution import (
    PRE_SPAWN,
    QUIET_DASK,
    DaskBackend,
    Tasks,
    TrainingJob,
    run_task,
    warm_worker,
)
from audit.mia._reference import reference_job
from prune.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"

VARIANTS: dict[str, dict[str, object]] = {
    # Dask's defaults, except the trim threshold (its cost was measured before, cluster_diagnose.py)
    "dask-defaults": {f"{PRE_SPAWN}.MALLOC_TRIM_THRESHOLD_": None},
    "project": QUIET_DASK,
}


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of this process, by native id, with its Python name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[int(tid)] = (
                names.get(int(tid), "native"),
                (int(fields[11]) + int(fields[12])) / tick,
            )
    return out


def probed(job: TrainingJob, k: int) -> dict[str, Any]:
    """Task ``k`` of ``job`` (:func:`run_task`), with what its worker's threads did meanwhile."""
    me = threading.get_native_id()
    before, r0 = thread_cpu(), resource.getrusage(resource.RUSAGE_THREAD)
    start, thread0 = time.perf_counter(), time.thread_time()
    trained = run_task(job, k)
    wall, train_cpu = time.perf_counter() - start, time.thread_time() - thread0
    r1, after = resource.getrusage(resource.RUSAGE_THREAD), thread_cpu()
    loop = sum(
        cpu - before.get(tid, (name, 0.0))[1]
        for tid, (name, cpu) in after.items()
        if tid != me and name == "MainThread"
    )
    digest = hashlib.sha256()
    for name, value in sorted(trained.state.items()):
        digest.update(name.encode() + np.ascontiguousarray(value).tobytes())
    return {
        "wall_s": wall,
        "process_cpu_s": trained.cpu_seconds,
        "train_thread_cpu_s": train_cpu,
        "loop_thread_cpu_s": loop,
        "gil_handoffs": r1.ru_nvcsw - r0.ru_nvcsw,
        "preempted": r1.ru_nivcsw - r0.ru_nivcsw,
        "minor_faults": r1.ru_minflt - r0.ru_minflt,
        "digest": digest.hexdigest()[:16],
    }


def process_cpu(_: object = None) -> float:
    return time.process_time()


@contextlib.contextmanager
def cluster(config: dict[str, object], workers: int) -> Iterator[Any]:
    import dask
    import distributed

    environ = dict(os.environ)
    try:
        with dask.config.set(config):
            local = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
        with local, distributed.Client(local, set_as_default=False) as client:
            yield client
    finally:
        os.environ.clear()
        os.environ.update(environ)


def measure(
    variant: str, workers: int, job: TrainingJob, models: int, idle_s: float
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    with cluster(VARIANTS[variant], workers) as client, client.as_current():
        addresses = sorted(client.scheduler_info()["workers"])
        client.gather([client.submit(warm_worker, None, 0, workers=[a]) for a in addresses])
        [shared] = client.scatter([job], broadcast=True, hash=False)
        first = [client.submit(probed, shared, i, workers=[a]) for i, a in enumerate(addresses)]
        client.gather(first)  # each worker's first model pays its allocations: untimed
        w0, d0 = client.run(process_cpu), time.process_time()
        time.sleep(idle_s)
        w1, d1 = client.run(process_cpu), time.process_time()
        timed = Tasks(probed, job, models + workers, what="probe")
        start, cpu = time.perf_counter(), time.process_time()
        results = DaskBackend().map(timed, jobs=workers, address=None)[workers:]
        wall, driver = time.perf_counter() - start, time.process_time() - cpu

    def mean(field: str) -> float:
        return round(statistics.mean(r[field] for r in results), 4)

    return {
        "variant": variant,
        "workers": workers,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "wall_s": round(wall, 2),
        "task_wall_s": mean("wall_s"),
        **{f: mean(f) for f in ("process_cpu_s", "train_thread_cpu_s")},
        **{f: mean(f) for f in ("loop_thread_cpu_s", "gil_handoffs", "preempted")},
        "minor_faults": [r["minor_faults"] for r in results],
        "driver_cpu_per_model_s": round(driver / models, 4),
        "idle_worker_cpu_per_s": round(statistics.mean(w1[a] - w0[a] for a in w0) / idle_s, 4),
        "idle_driver_cpu_per_s": round((d1 - d0) / idle_s, 4),
        "digests": [r["digest"] for r in results],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", type=int, default=4, help="timed models per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--idle-s", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "dask-worker-probe.json")
    args = parser.parse_args()

    data = load_dataset("fashion-mnist")
    x = data.x_train.reshape(len(data.x_train), -1).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    reference = order[10000:30000]
    job = reference_job(
        x[reference],
        data.y_train[reference],
        architecture=Architecture("mlp", (256, 256), (784,), 10),
        count=args.models + args.workers,
        recipe=TrainingRecipe(epochs=args.epochs),
        seed=0,
        train_size=10000,
        device="cpu",
    )
    runs = []
    for _ in range(args.rounds):
        for variant in VARIANTS:
            runs.append(measure(variant, args.workers, job, args.models, args.idle_s))
            print(json.dumps(runs[-1]), file=sys.stderr)
    digests = {tuple(r["digests"]) for r in runs}
    doc = {
        "benchmark": "dask-worker-probe",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/dask_worker_probe.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "variants": {name: {k: str(v) for k, v in cfg.items()} for name, cfg in VARIANTS.items()},
        "runs": runs,
        "identical_across_variants": len(digests) == 1,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if doc["identical_across_variants"] else 1


if __name__ == "__main__":
    sys.exit(main())
