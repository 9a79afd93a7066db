"""Do the membership-inference confidence intervals cover 0.5 when there is nothing to find?

Null splits: the target (digits, ``prune train``'s default MLP recipe: 64-64 ReLU, 60 epochs,
batch 128, Adam 1e-3) trains on 300 members. The auditor's reference data is 600 other
digits (halves of it = the target's training size) and the rest is a pool of held-out
non-members. Each null split ``s`` draws a fresh "forget" set of 100 and a non-member set of
400 from that pool (both are non-members, so the true AUC is 0.5) *and* trains its own 8
reference models with reference seed ``s`` (the target's recipe). For every split and attack
we record whether the 95% interval of the AUC covers 0.5:

* ``candidates``: the old interval, bootstrap over members and non-members only;
* ``two-level``: the bootstrap over reference models (20 draws) and candidates, what
  ``audit mia`` / ``audit verify --mia`` now report and decide on.

A second table holds one split *fixed* while the reference seed varies: the spread of the AUC
that the reference seed alone causes, and how often each interval covers 0.5 there.

Run: ``nice -n 10 python benchmarks/bench_mia_null.py [--splits 24]``
(writes benchmarks/results/mia-null-coverage.json).
"""

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

from audit.mia import (
    Architecture,
    TrainingRecipe,
    evaluate,
    make_attack,
    torch_logits_fn,
    train_reference_models,
)
from audit.mia._arch import module_from_state
from audit.mia._game import library_versions
from audit.mia._train import train_model

ROOT = Path(__file__).resolve().parent
RECIPE = TrainingRecipe(epochs=60, batch_size=128, lr=1e-3)
ARCH = Architecture("mlp", (64, 64), (64,), 10)
ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "lira": {"variant": "offline", "variance": "fixed"},
    "rmia": {"offline_a": "auto"},
    "loss": {},
}


def _covers(low: float, high: float) -> bool:
    return low <= 0.5 <= high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, default=24)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--model-bootstrap", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "mia-null-coverage.json")
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    members, ref, pool = order[:300], order[300:900], order[900:]
    target = torch_logits_fn(
        module_from_state(
            ARCH, train_model(ARCH, x[members], y[members], recipe=RECIPE, seed=0).state
        )
    )
    fixed_rng = np.random.default_rng(10_000)
    fixed = fixed_rng.permutation(pool)
    fixed_a, fixed_b = fixed[:100], fixed[100:500]
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for s in range(args.splits):
        split_start = time.perf_counter()
        p = np.random.default_rng(1_000 + s).permutation(pool)
        a, b = p[:100], p[100:500]
        refs = train_reference_models(
            x[ref],
            y[ref],
            architecture=ARCH,
            count=args.models,
            recipe=RECIPE,
            seed=s,
            train_size=300,
            jobs=args.jobs,
        )
        trained_at = time.perf_counter()
        draws = np.random.default_rng([s, 7]).integers(
            0, refs.count, (args.model_bootstrap, refs.count)
        )
        for name, params in ATTACK_PARAMS.items():
            attack = make_attack(name, **params).fit(reference=refs)
            replicas = [attack.resampled(d) for d in draws] if attack.uses_reference_models else []
            row: dict[str, Any] = {"split": s, "reference_seed": s, "attack": name}
            for label, (ia, ib) in (("random", (a, b)), ("fixed", (fixed_a, fixed_b))):
                pos = attack.score(target, x[ia], y[ia])
                neg = attack.score(target, x[ib], y[ib])
                reps = [
                    (r.score(target, x[ia], y[ia]), r.score(target, x[ib], y[ib])) for r in replicas
                ]
                one = evaluate(pos, neg, bootstrap=args.bootstrap, rng=np.random.default_rng(s))
                two = evaluate(
                    pos,
                    neg,
                    bootstrap=args.bootstrap,
                    rng=np.random.default_rng(s),
                    replicates=reps,
                )
                row[label] = {
                    "auc": one.auc.value,
                    "ci_candidates": [one.auc.low, one.auc.high],
                    "ci_two_level": [two.auc.low, two.auc.high],
                    "covers_candidates": _covers(one.auc.low, one.auc.high),
                    "covers_two_level": _covers(two.auc.low, two.auc.high),
                }
            rows.append(row)
        print(
            f"split {s} ({trained_at - split_start:.0f} s training, "
            f"{time.perf_counter() - trained_at:.0f} s attacks): "
            + ", ".join(
                f"{r['attack']} {r['random']['auc']:.3f} {r['random']['covers_two_level']}"
                for r in rows[-len(ATTACK_PARAMS) :]
            ),
            flush=True,
        )
    summary: dict[str, Any] = {}
    for name in ATTACK_PARAMS:
        mine = [r for r in rows if r["attack"] == name]
        fixed_aucs = [r["fixed"]["auc"] for r in mine]
        summary[name] = {
            "splits": len(mine),
            "coverage_candidates": float(np.mean([r["random"]["covers_candidates"] for r in mine])),
            "coverage_two_level": float(np.mean([r["random"]["covers_two_level"] for r in mine])),
            "fixed_split_auc_range_over_reference_seeds": [min(fixed_aucs), max(fixed_aucs)],
            "fixed_split_coverage_candidates": float(
                np.mean([r["fixed"]["covers_candidates"] for r in mine])
            ),
            "fixed_split_coverage_two_level": float(
                np.mean([r["fixed"]["covers_two_level"] for r in mine])
            ),
            "mean_ci_width_candidates": float(
                np.mean([np.diff(r["random"]["ci_candidates"])[0] for r in mine])
            ),
            "mean_ci_width_two_level": float(
                np.mean([np.diff(r["random"]["ci_two_level"])[0] for r in mine])
            ),
        }
    doc = {
        "benchmark": "mia-null-coverage",
        "created": datetime.now(UTC).isoformat(),
        "setup": {
            "data": "digits (sklearn), x/16",
            "target": "mlp 64-64, 300 members, " + json.dumps(RECIPE.describe()),
            "reference_data": 600,
            "reference_models_per_split": args.models,
            "reference_train_size": 300,
            "forget": 100,
            "non_members": 400,
            "bootstrap": args.bootstrap,
            "model_bootstrap": args.model_bootstrap,
            "attacks": ATTACK_PARAMS,
        },
        "summary": summary,
        "rows": rows,
        "seconds": time.perf_counter() - start,
        "loadavg": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": library_versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
