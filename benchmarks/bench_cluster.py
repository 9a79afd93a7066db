"""Reference models on a cluster: LiRA with K reference models on Fashion-MNIST, trained by the
local backend (joblib processes), Ray and Dask, each with 1 and 2 workers, on this machine.

1. A target MLP (the auditor's recipe) trains on ``--members`` Fashion-MNIST training images;
   the test split gives as many non-members; ``--reference`` other training images are the
   auditor's reference data.
2. Baseline: the K reference models trained one after the other in this process (``sequential``),
   ``t_seq``; their weights' SHA-256 is the digest every other run must reproduce bit for bit.
3. For each backend and worker count ``w``: the cluster is started (timed: ``startup_s``), the K
   models train through it (timed: ``wall_s``, workers cold: each imports torch for its first
   task), the digest is compared, the cluster is stopped.
   ``overhead_per_model_s = (w * wall_s - t_seq) / K``: worker-seconds spent per model beyond the
   in-process training itself (start-up of worker processes, shipping data and weights,
   scheduling, idle workers at the end). ``speedup_2v1 = wall_s(w=1) / wall_s(w=2)``.
   The local backend with one worker runs in this process (joblib runs ``n_jobs=1``
   sequentially): its speed-up includes the start of two worker processes, Ray's and Dask's
   do not (both counts start their workers).
4. LiRA offline (fixed variance) with the baseline's reference models scores members vs
   non-members on the target: AUC and TPR at 0.1% FPR (no bootstrap: the timing is the point).

The load average is recorded before and after every run: on a shared machine the speed-ups are
only as good as the quiet it had.

Full run (needs the cluster extra and a quiet 2-core machine, about 15-25 min):
    nice -n 10 python benchmarks/bench_cluster.py --models 16
Small check:
    python benchmarks/bench_cluster.py --models 4 --reference 2000 --members 1000 --epochs 2 \\
        --out benchmarks/results/cluster-fashion-small.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from audit.mia import Architecture, LiraAttack, ReferenceSet, TrainingRecipe, evaluate
from audit.mia import train_reference_models as train_refs
from audit.mia._arch import module_from_state
from audit.mia._train import torch_logits_fn, train_model
from prune.data import load_dataset

RESULTS = Path(__file__).resolve().parent / "results"


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def digest(refs: ReferenceSet) -> str:
    h = hashlib.sha256()
    for model in refs.models:
        for name, value in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def cluster(backend: str, workers: int) -> Iterator[None]:
    """A local cluster of ``workers`` single-CPU workers on 127.0.0.1 for the backend (nothing
    for ``local``, whose joblib pool starts with the run)."""
    if backend == "ray":
        import ray

        ray.init(
            address="local",
            num_cpus=workers,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level="WARNING",
        )
        try:
            yield
        finally:
            ray.shutdown()
    elif backend == "dask":
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as local,
            Client(local),
        ):
            yield
    else:
        yield


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--members", type=int, default=5000)
    parser.add_argument("--reference", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--backends", default="local,ray,dask")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster-fashion-mnist.json")
    args = parser.parse_args()

    data = load_dataset("fashion-mnist")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(data.y_train))
    x_all = data.x_train.reshape(len(data.x_train), -1).astype(np.float32)
    members = order[: args.members]
    reference = order[args.members : args.members + args.reference]
    x_test = data.x_test.reshape(len(data.x_test), -1).astype(np.float32)[: args.members]
    y_test = data.y_test[: args.members]
    arch = Architecture("mlp", (args.hidden,), (x_all.shape[1],), 10)
    recipe = TrainingRecipe(epochs=args.epochs)
    target = module_from_state(
        arch,
        train_model(arch, x_all[members], data.y_train[members], recipe=recipe, seed=1).state,
    )

    def train(backend: str, workers: int) -> ReferenceSet:
        return train_refs(
            x_all[reference],
            data.y_train[reference],
            architecture=arch,
            count=args.models,
            recipe=recipe,
            seed=args.seed,
            jobs=workers,
            backend=backend,
            device="cpu",
        )

    print(f"baseline: {args.models} models in this process", file=sys.stderr)
    before = load()
    start = time.perf_counter()
    base = train("sequential", 1)
    t_seq = time.perf_counter() - start
    base_digest = digest(base)
    lira = LiraAttack(variant="offline", variance="fixed").fit(reference=base)
    fn = torch_logits_fn(target)
    scores = (
        lira.score(fn, x_all[members], data.y_train[members]),
        lira.score(fn, x_test, y_test),
    )
    metrics = evaluate(*scores, bootstrap=1, rng=np.random.default_rng(args.seed))
    runs: list[dict[str, Any]] = []
    for backend in args.backends.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            print(f"{backend} with {workers} worker(s)", file=sys.stderr)
            load_before = load()
            t0 = time.perf_counter()
            try:
                with cluster(backend, workers):
                    startup = time.perf_counter() - t0
                    t1 = time.perf_counter()
                    refs = train(backend, workers)
                    wall = time.perf_counter() - t1
            except Exception as exc:  # recorded, not hidden: e.g. a cluster that did not start
                lines = str(exc).strip().splitlines()
                runs.append(
                    {
                        "backend": backend,
                        "workers": workers,
                        "error": f"{type(exc).__name__}: {lines[-1] if lines else ''}",
                        "load_before": load_before,
                        "load_after": load(),
                    }
                )
                print(f"  {runs[-1]}", file=sys.stderr)
                continue
            runs.append(
                {
                    "backend": backend,
                    "workers": workers,
                    "startup_s": round(startup, 2),
                    "wall_s": round(wall, 2),
                    "overhead_per_model_s": round((workers * wall - t_seq) / args.models, 3),
                    "identical_to_baseline": digest(refs) == base_digest,
                    "load_before": load_before,
                    "load_after": load(),
                }
            )
            print(f"  {runs[-1]}", file=sys.stderr)
    speedups = {}
    for backend in args.backends.split(","):
        by_w = {
            r["workers"]: r["wall_s"] for r in runs if r["backend"] == backend and "wall_s" in r
        }
        if 1 in by_w and 2 in by_w:
            speedups[backend] = round(by_w[1] / by_w[2], 3)
    doc = {
        "benchmark": "cluster",
        "what": f"LiRA offline with {args.models} reference models on Fashion-MNIST: reference "
        "training on the local, Ray and Dask backends with 1 and 2 workers",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_cluster.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": {
            "models": args.models,
            "members": args.members,
            "reference": args.reference,
            "epochs": args.epochs,
            "architecture": arch.describe(),
            "seed": args.seed,
        },
        "baseline": {
            "sequential_s": round(t_seq, 2),
            "per_model_s": round(t_seq / args.models, 3),
            "weights_sha256": base_digest,
            "load_before": before,
        },
        "lira": {
            "auc": round(metrics.auc.value, 4),
            "tpr_at_0.001": round(metrics.tpr(0.001).value, 4),
            "members": len(members),
            "non_members": len(y_test),
        },
        "runs": runs,
        "speedup_2_vs_1": speedups,
        "load_end": load(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"speedup_2_vs_1": speedups, "out": str(args.out)}))
    return 0 if all(r.get("identical_to_baseline") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
