"""Patch-leakage benchmark (threat 11): linkability of deletion requesters from the patched
model, and what the decoy-deletion mitigation (``prune unlearn --decoys K``) buys and costs.

For each data set and seed:

1. The owner trains the ``prune train`` default MLP (digits 64-64, 60 epochs; Fashion-MNIST
   256-256, 12 epochs) on the training split.
2. ``requests`` training rows are drawn uniformly as the deletion requesters.
3. For each ``K`` in ``--decoys``: :func:`prune.privacy.add_decoys` adds ``K`` decoys per request
   and ``prune.unlearn.unlearn`` (engine defaults) forgets all of them.
4. A curious party holds a pool = the whole training split + the second half of the test split
   (non-members) and measures linkability (:mod:`threat_models.leakage`): white-box (reads the
   gates from the ONNX and singles out records alone in a patched region) and black-box
   (disagreement with its own reference MLP trained on the first half of the test split).
5. Cost of the mitigation: test-accuracy drop, training-set prediction changes outside the
   requested rows, patches, unlearning seconds.

Run: ``python benchmarks/bench_leakage.py [--dataset digits|fashion-mnist|all] [--seeds 0 1 2]``
(writes benchmarks/results/leakage-<dataset>.json). Numbers depend on the machine's load; the
file records the load average and CPU count next to them."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from prune.data import load_dataset
from prune.privacy import add_decoys
from prune.train import DEFAULT_EPOCHS, DEFAULT_HIDDEN, TrainConfig, export_onnx, model_input, train
from prune.unlearn import unlearn
from threat_models.leakage import black_box, white_box

RESULT_TYPE = "https://prune-audit.dev/bench/leakage/v1"
RESULTS = Path(__file__).resolve().parent / "results"
REQUESTS = {"digits": 16, "fashion-mnist": 32}


def _original(dataset: str, seed: int, scratch: Path) -> tuple[bytes, Any, float]:
    data = load_dataset(dataset, seed=seed)  # type: ignore[arg-type]
    config = TrainConfig(
        arch="mlp", hidden=DEFAULT_HIDDEN[dataset], epochs=DEFAULT_EPOCHS[dataset], seed=seed
    )
    start = time.perf_counter()
    model, result = train(data, config)
    seconds = time.perf_counter() - start
    path = scratch / f"{dataset}-{seed}.onnx"
    export_onnx(model, path, input_shape=result.input_shape)
    return path.read_bytes(), data, seconds


def run_cell(raw: bytes, data: Any, *, seed: int, requests: int, decoys: int) -> dict[str, Any]:
    x_tr = model_input("mlp", data.x_train)
    x_te = model_input("mlp", data.x_test)
    rng = np.random.default_rng([seed, requests])
    requested = rng.choice(len(x_tr), requests, replace=False)
    plan = add_decoys(
        requested,
        n_train=len(x_tr),
        per_request=decoys,
        rng=np.random.default_rng([seed, requests, decoys]),
    )
    start = time.perf_counter()
    result = unlearn(
        raw,
        x_tr,
        data.y_train,
        forget_indices=plan.forget_indices,
        x_test=x_te,
        y_test=data.y_test,
        seed=seed,
    )
    seconds = time.perf_counter() - start
    half = len(x_te) // 2
    pool = np.concatenate([x_tr, x_te[half:]])
    requester = np.zeros(len(pool), dtype=bool)
    requester[requested] = True
    deleted = np.zeros(len(pool), dtype=bool)
    deleted[plan.forget_indices] = True
    s = result.summary
    return {
        "seed": seed,
        "decoys_per_request": decoys,
        "requests": requests,
        "forgotten": len(plan.forget_indices),
        "certified": s["certified"],
        "patches": s["patches"],
        "unlearn_seconds": seconds,
        "test_accuracy_before": s["test_accuracy_before"],
        "test_accuracy_after": s["test_accuracy_after"],
        "test_accuracy_drop": s["test_accuracy_before"] - s["test_accuracy_after"],
        "test_prediction_changes": s["test_prediction_changes"],
        "retain_prediction_changes": s["retain_prediction_changes"],
        "white_box": white_box(
            result.patched_model, pool, requester=requester, deleted=deleted
        ).to_json(),
        "black_box": black_box(
            result.patched_model,
            pool,
            requester=requester,
            deleted=deleted,
            public=(x_te[:half], data.y_test[:half]),
            seed=seed,
        ).to_json(),
    }


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for k in sorted({r["decoys_per_request"] for r in rows}):
        cell = [r for r in rows if r["decoys_per_request"] == k]

        def stat(values: list[float]) -> dict[str, float]:
            return {"mean": float(np.mean(values)), "std": float(np.std(values))}

        out.append(
            {
                "decoys_per_request": k,
                "seeds": len(cell),
                "white_box_linkability": stat([r["white_box"]["linkability"] for r in cell]),
                "white_box_recall": stat([r["white_box"]["recall"] for r in cell]),
                "black_box_linkability": stat([r["black_box"]["linkability"] for r in cell]),
                "test_accuracy_drop": stat([r["test_accuracy_drop"] for r in cell]),
                "retain_prediction_changes": stat([r["retain_prediction_changes"] for r in cell]),
                "patches": stat([r["patches"] for r in cell]),
                "unlearn_seconds": stat([r["unlearn_seconds"] for r in cell]),
                "expected_precision": 1.0 / (1 + k),
            }
        )
    return out


def bench(dataset: str, *, seeds: list[int], decoys: list[int], scratch: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    training: list[float] = []
    for seed in seeds:
        raw, data, seconds = _original(dataset, seed, scratch)
        training.append(seconds)
        for k in decoys:
            row = run_cell(raw, data, seed=seed, requests=REQUESTS[dataset], decoys=k)
            rows.append(row)
            print(
                f"{dataset} seed {seed} K={k}: white {row['white_box']['linkability']:.3f} "
                f"black {row['black_box']['linkability']:.3f} drop "
                f"{row['test_accuracy_drop']:.4f} patches {row['patches']} "
                f"{row['unlearn_seconds']:.1f} s",
                flush=True,
            )
    return {
        "type": RESULT_TYPE,
        "version": 1,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dataset": dataset,
        "model": {
            "arch": "mlp",
            "hidden": list(DEFAULT_HIDDEN[dataset]),
            "epochs": DEFAULT_EPOCHS[dataset],
        },
        "requests": REQUESTS[dataset],
        "pool": "training split + second half of the test split",
        "training_seconds": training,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        "rows": rows,
        "summary": _summary(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "fashion-mnist", "all"], default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decoys", type=int, nargs="+", default=[0, 1, 3, 7])
    args = parser.parse_args()
    datasets = ["digits", "fashion-mnist"] if args.dataset == "all" else [args.dataset]
    scratch = RESULTS.parent / "runs" / "leakage"
    scratch.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    for dataset in datasets:
        doc = bench(dataset, seeds=args.seeds, decoys=args.decoys, scratch=scratch)
        out = RESULTS / f"leakage-{dataset}.json"
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        tmp.replace(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
