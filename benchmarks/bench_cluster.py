"""Reference models on a cluster: LiRA with K reference models on Fashion-MNIST, trained by the
local backend (joblib processes), Ray and Dask, each with 1 and 2 workers, on this machine.

Workload (what an audit of a ``prune train --dataset fashion-mnist`` target trains):

* the recipe is the target's ``train.json`` (``--train-json``; default: the one ``prune train``
  writes for Fashion-MNIST: MLP 256-256, 12 epochs, batch 128, Adam lr 1e-3), read by the
  auditor's own :func:`audit.mia.read_train_json`, as ``audit mia --train-json`` does;
* the target trains on ``--members`` Fashion-MNIST training images (default 10,000; the full
  60,000 would make one model about 20 s on one core and the run too long to repeat), the test
  split gives as many non-members, and ``--reference`` other training images (default 20,000,
  twice the target's set, as docs/MIA.md advises) are the auditor's reference data; every
  reference model trains on the target's training-set size (``train_size`` = members), about
  3.5 s of one core per model.

For each backend and worker count ``w`` (the first run, ``local`` with one worker, trains in
this process as ``--jobs 1`` does, and is the baseline every run must reproduce bit for bit):

1. ``startup_s``: the cluster starts (:func:`audit.mia._execution.open_session`: a local Ray, a
   Dask LocalCluster, nothing for joblib);
2. ``warmup_s``: each worker pays its one-time costs (:func:`~audit.mia._execution.warm_worker`:
   start the process, import torch, build an optimiser, which imports torch._dynamo);
3. ``wall_s``: the K models train on the warm workers. Each task times itself inside its worker
   (``task_s``, ``task_cpu_s``), so ``overhead_per_model_s = (w * wall_s - sum task_s) / K`` is
   the worker time per model spent outside training (dispatch, shipping data and weights,
   scheduling, workers idle at the end); ``driver_cpu_per_model_s`` is this process's CPU, and
   ``cpu_overhead_per_model_s`` the CPU of every process of the run (this one, the cluster's,
   the workers') beyond the tasks' own: it holds up on a loaded machine, where wall times don't.
   ``overhead_per_model_cold_s`` counts ``startup_s + warmup_s + wall_s`` instead of ``wall_s``.

``speedup_2_vs_1`` is ``wall_s(1) / wall_s(2)`` on the same backend (warm workers: the steady
state of a cluster that trains many models); ``speedup_2_vs_1_end_to_end`` divides
``startup_s + warmup_s + wall_s``, what one ``audit mia --backend B --jobs W`` run pays.
With ``--repeats R`` every backend runs R times with each worker count, in alternating order
(1, 2, then 2, 1), and the speed-ups divide mean times (``speedup_2_vs_1_per_repeat`` lists
each repeat's own). Per backend and worker count the summary gives ``overhead_per_model_s``,
``cpu_overhead_per_model_s`` and ``task_cpu_s``; ``task_cpu_2_vs_1`` is how much more CPU a
model took with two workers than with one: two trainings share the machine's caches and memory
(and, on a shared machine, whatever else runs), and a single run's model time varies by 10-25 %
between runs minutes apart, which a single 1-worker / 2-worker pair turns into its speed-up.
LiRA offline (fixed variance) with the baseline's models then scores members vs non-members
(AUC, TPR at 0.1% FPR; no bootstrap: the timing is the point).

The load average is recorded before and after every run: wall times and speed-ups are only as
good as the quiet the machine had; CPU seconds (``task_cpu_s``, driver CPU) hold up better,
but not fully: with the load average at 5-10 on 2 cores a model takes twice its quiet CPU time.

Full run (needs the cluster extra; about 5-6 min on a quiet 2-core machine, 11-12 min with
``--repeats 2``, the recorded run):
    python benchmarks/bench_cluster.py --repeats 2
Small check (about 1 min quiet):
    python benchmarks/bench_cluster.py --models 4 --members 1000 --reference 2000 --epochs 2 \\
        --out benchmarks/results/cluster-fashion-small.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from audit.mia import LiraAttack, TrainingRecipe, evaluate, read_train_json
from audit.mia._arch import module_from_state, resolve_architecture
from audit.mia._execution import (
    Tasks,
    TrainingJob,
    make_backend,
    open_session,
    reference_tasks,
    warm_worker,
)
from audit.mia._reference import reference_job, reference_set
from audit.mia._train import TrainedWeights, torch_logits_fn, train_model
from prune.data import load_dataset
from prune.train import DEFAULT_EPOCHS, DEFAULT_HIDDEN, TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def digest(trained: Sequence[TrainedWeights]) -> str:
    h = hashlib.sha256()
    for model in trained:
        for name, value in sorted(model.state.items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def prune_train_json() -> dict[str, Any]:
    """The train.json ``prune train --dataset fashion-mnist`` writes (its recipe part)."""
    config = TrainConfig(
        arch="mlp", hidden=DEFAULT_HIDDEN["fashion-mnist"], epochs=DEFAULT_EPOCHS["fashion-mnist"]
    )
    return {"version": 1, "dataset": "fashion-mnist", "config": dataclasses.asdict(config)}


def tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process and of every process below it: the clusters
    started here (Ray's GCS and raylet, Dask's workers; the Dask scheduler and nannies run in
    this process) and their workers, joblib's loky workers. Empty without psutil."""
    try:
        psutil: Any = importlib.import_module("psutil")
    except ImportError:
        return {}
    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[proc.pid] = times.user + times.system
    return out


def versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "joblib", "ray", "distributed"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            out[name] = "not installed"
    return out


def timed_run(
    backend: str, workers: int, job: TrainingJob, in_process_warmup: float
) -> tuple[dict[str, Any], list[TrainedWeights]]:
    """One backend with ``workers`` workers: start, warm, train; the run's record and models.
    The local backend with one worker trains in this process, warmed long before: its warm-up
    is ``in_process_warmup``, what this process paid on its first use of torch.optim."""
    runner = make_backend(backend)
    record: dict[str, Any] = {"backend": backend, "workers": workers, "load_before": load()}
    t0 = time.perf_counter()
    with open_session(backend, jobs=workers, address=None):
        t1 = time.perf_counter()
        warmed = runner.map(Tasks(warm_worker, None, workers), jobs=workers, address=None)
        t2, c2, tree2 = time.perf_counter(), time.process_time(), tree_cpu()
        trained = runner.map(reference_tasks(job), jobs=workers, address=None)
        t3, c3, tree3 = time.perf_counter(), time.process_time(), tree_cpu()
    startup, warmup, wall = t1 - t0, t2 - t1, t3 - t2
    if backend == "local" and workers == 1:
        warmup = in_process_warmup
    k = job.count
    task_s, task_cpu = [r.seconds for r in trained], [r.cpu_seconds for r in trained]
    end_to_end = startup + warmup + wall
    record.update(
        {
            "startup_s": round(startup, 2),
            "warmup_s": round(warmup, 2),
            "wall_s": round(wall, 2),
            "end_to_end_s": round(end_to_end, 2),
            "workers_warmed": len(set(warmed)),
            "workers_used": len({r.worker for r in trained}),
            "task_s": round(statistics.mean(task_s), 3),
            "task_cpu_s": round(statistics.mean(task_cpu), 3),
            "task_cpu_s_max": round(max(task_cpu), 3),
            "overhead_per_model_s": round((workers * wall - sum(task_s)) / k, 3),
            "overhead_per_model_cold_s": round((workers * end_to_end - sum(task_s)) / k, 3),
            "driver_cpu_per_model_s": round((c3 - c2) / k, 4),
            "cpu_overhead_per_model_s": (
                round((sum(tree3[p] - tree2.get(p, 0.0) for p in tree3) - sum(task_cpu)) / k, 4)
                if tree3
                else None
            ),
            "processes": len(tree3),
            "load_after": load(),
        }
    )
    return record, trained


def run_plan(
    backends: Sequence[str], workers: Sequence[int], repeats: int
) -> list[tuple[str, int, int]]:
    """``(backend, workers, repeat)`` in run order. A backend's runs are adjacent and its worker
    counts alternate between repeats (1, 2, then 2, 1): a machine that gets slower or faster
    during the benchmark then shifts both sides of a speed-up alike instead of one. The first
    run is the baseline, ``local`` with one worker (in this process, as ``--jobs 1`` trains)."""
    plan = [("local", 1, 0)]
    for backend in dict.fromkeys(backends):
        for repeat in range(repeats):
            order = list(workers) if repeat % 2 == 0 else list(reversed(workers))
            plan += [(backend, w, repeat) for w in order if (backend, w, repeat) not in plan]
    return plan


def mean_of(runs: Sequence[dict[str, Any]], backend: str, workers: int, field: str) -> float | None:
    """The mean of ``field`` over the runs of ``backend`` with ``workers`` workers that have it."""
    values = [
        r[field]
        for r in runs
        if r["backend"] == backend and r["workers"] == workers and r.get(field) is not None
    ]
    return statistics.mean(values) if values else None


def speedup_of(runs: Sequence[dict[str, Any]], backend: str, repeat: int) -> float | None:
    by_w = {
        r["workers"]: r.get("wall_s")
        for r in runs
        if r["backend"] == backend and r.get("repeat") == repeat
    }
    one, two = by_w.get(1), by_w.get(2)
    return round(one / two, 3) if one and two else None


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _inverse(value: float | None) -> float | None:
    return None if not value else round(1 / value, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--members", type=int, default=10000)
    parser.add_argument("--reference", type=int, default=20000)
    parser.add_argument(
        "--train-json",
        type=Path,
        default=None,
        help="the target's train.json (default: prune train's Fashion-MNIST recipe)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override train.json's epochs")
    parser.add_argument("--backends", default="local,ray,dask")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every backend and worker count this often, the worker counts in alternating "
        "order (1, 2, then 2, 1): speed-ups divide the mean wall times",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster-fashion-mnist.json")
    args = parser.parse_args()

    if args.train_json is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "train.json"
            path.write_text(json.dumps(prune_train_json()))
            owner = read_train_json(path)
        recipe_source = "prune train --dataset fashion-mnist (its train.json)"
    else:
        owner = read_train_json(args.train_json)
        recipe_source = str(args.train_json)
    recipe: TrainingRecipe = owner.recipe(epochs=args.epochs)

    start = time.perf_counter()  # what `audit mia --jobs 1` pays once, in its own process
    warm_worker(None, 0)
    in_process_warmup = time.perf_counter() - start
    data = load_dataset("fashion-mnist")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(data.y_train))
    x_all = data.x_train.reshape(len(data.x_train), -1).astype(np.float32)
    members = order[: args.members]
    reference = order[args.members : args.members + args.reference]
    x_test = data.x_test.reshape(len(data.x_test), -1).astype(np.float32)[: args.members]
    y_test = data.y_test[: args.members]
    arch = resolve_architecture(
        onnx_model=None, declared=owner.arch, input_shape=(x_all.shape[1],), classes=10
    )
    print(f"target: {arch.describe()} on {len(members)} images", file=sys.stderr)
    target = module_from_state(
        arch,
        train_model(arch, x_all[members], data.y_train[members], recipe=recipe, seed=1).state,
    )
    job = reference_job(
        x_all[reference],
        data.y_train[reference],
        architecture=arch,
        count=args.models,
        recipe=recipe,
        seed=args.seed,
        train_size=args.members,
        device="cpu",
    )

    plan = run_plan(
        args.backends.split(","), [int(w) for w in args.workers.split(",")], args.repeats
    )
    runs: list[dict[str, Any]] = []
    base_digest, baseline_weights = None, []
    for backend, workers, repeat in plan:
        print(f"{backend} with {workers} worker(s), repeat {repeat}", file=sys.stderr)
        try:
            record, trained = timed_run(backend, workers, job, in_process_warmup)
            record["repeat"] = repeat
            got: str | None = digest(trained)
        except Exception as exc:  # recorded, not hidden: e.g. a cluster that did not start
            lines = str(exc).strip().splitlines()
            record = {
                "backend": backend,
                "workers": workers,
                "repeat": repeat,
                "error": f"{type(exc).__name__}: {lines[-1] if lines else ''}",
                "load_after": load(),
            }
            got, trained = None, []
        if base_digest is None:
            base_digest, baseline_weights = got, trained
            if got is None:
                print(f"  the baseline failed: {record['error']}", file=sys.stderr)
                return 1
        if got is not None:
            record["identical_to_baseline"] = got == base_digest
        runs.append(record)
        print(f"  {record}", file=sys.stderr)

    refs = reference_set(job, baseline_weights, seed=args.seed, backend="local")
    lira = LiraAttack(variant="offline", variance="fixed").fit(reference=refs)
    fn = torch_logits_fn(target)
    scores = (
        lira.score(fn, x_all[members], data.y_train[members]),
        lira.score(fn, x_test, y_test),
    )
    metrics = evaluate(*scores, bootstrap=1, rng=np.random.default_rng(args.seed))

    names = list(dict.fromkeys(b for b, _, _ in plan))

    def ratio(backend: str, field: str) -> float | None:
        by_w = {w: mean_of(runs, backend, w, field) for w in (1, 2)}
        one, two = by_w[1], by_w[2]
        return round(one / two, 3) if one is not None and two else None

    def per_workers(field: str, digits: int = 3) -> dict[str, dict[str, float | None]]:
        workers = sorted({w for _, w, _ in plan})
        return {
            b: {str(w): _rounded(mean_of(runs, b, w, field), digits) for w in workers}
            for b in names
        }

    doc = {
        "benchmark": "cluster",
        "what": f"LiRA offline with {args.models} reference models on Fashion-MNIST: reference "
        "training on the local, Ray and Dask backends with 1 and 2 workers",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/bench_cluster.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python_bytecode_cache": os.environ.get("PYTHONDONTWRITEBYTECODE") is None,
        },
        "versions": versions(),
        "config": {
            "models": args.models,
            "members": args.members,
            "non_members": len(y_test),
            "reference": args.reference,
            "train_size_per_model": sorted({int(n) for n in job.in_reference.sum(axis=1)}),
            "architecture": arch.describe(),
            "recipe": recipe.describe(),
            "recipe_source": recipe_source,
            "threads_per_model": job.threads,
            "seed": args.seed,
        },
        "baseline": {"run": "local with 1 worker (in this process)", "weights_sha256": base_digest},
        "lira": {
            "auc": round(metrics.auc.value, 4),
            "tpr_at_0.001": round(metrics.tpr(0.001).value, 4),
            "members": len(members),
            "non_members": len(y_test),
        },
        "runs": runs,
        "repeats": args.repeats,
        "speedup_2_vs_1": {b: ratio(b, "wall_s") for b in names},
        "speedup_2_vs_1_end_to_end": {b: ratio(b, "end_to_end_s") for b in names},
        "speedup_2_vs_1_per_repeat": {
            b: [speedup_of(runs, b, r) for r in range(args.repeats)] for b in names
        },
        "overhead_per_model_s": per_workers("overhead_per_model_s"),
        "cpu_overhead_per_model_s": per_workers("cpu_overhead_per_model_s", 4),
        "task_cpu_s": per_workers("task_cpu_s"),
        "task_cpu_2_vs_1": {b: _inverse(ratio(b, "task_cpu_s")) for b in names},
        "load_end": load(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        json.dumps(
            {
                "speedup_2_vs_1": doc["speedup_2_vs_1"],
                "speedup_2_vs_1_end_to_end": doc["speedup_2_vs_1_end_to_end"],
                "out": str(args.out),
            }
        )
    )
    return 0 if all(r.get("identical_to_baseline") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
