"""Where the Lagrangian solve's time goes on 600 Fashion-MNIST regions, and what the levers give
(issue 16: 600 points at >= 50x retraining).

Three measurements on the regions of the speed-up scenario's 600 points (``bench_patch.py
--scenarios speedup``: the same seed, model and data), one torch thread:

* ``steps``: the whole ``unlearn`` call (no utility evaluation) with 6, 4, 3, 2, 1 and 0
  (the default, ``prune.unlearn.DEFAULT_SOLVER_STEPS``) projected Adam steps: solve seconds,
  mean push delta, claims certified. Steps buy tightness; at 0 steps the solve is the passes
  around the ascent.
* ``rows``: on the first batch of regions, every spec row is tightened for 0, 1, 2, 3, 4, 6 and
  10 steps and bounded exactly. A row can lower a region's push only if its bound after ``k``
  steps is above the region's final (6-step) maximum; the fraction of such rows is the least work
  any row selection made after ``k`` steps can do.
* ``cuts``: the default solver with the region cut at another tensor (``--cut``, default the
  first layer's pre-activations): the solve no longer carries the 784-wide input, but its box is
  the feature range, so the certified set and the push change; ``prepare`` then includes the pass
  over the training features that declares that box.
* ``flips``: the fraction of input coordinates whose box maximiser ``sign(r)`` changes from one
  ascent step to the next. Incremental (sparse) first-layer products pay only where it is small.

Run: ``python benchmarks/bench_ascent.py --work benchmarks/runs/patch-fashion-mnist/work
--out benchmarks/results/ascent-fashion-mnist.json`` (needs the speed-up scenario's work folder:
``python benchmarks/bench_patch.py --dataset fashion-mnist --scenarios speedup`` makes it)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prune.solvers._lagrangian as lagrangian
from benchmarks.bench_patch import _load
from prune.unlearn import unlearn

POINTS = 600


def _forget(n: int) -> np.ndarray[Any, Any]:
    """The speed-up scenario's 600 points (``bench_patch.scenario_speedup``)."""
    return np.sort(np.random.default_rng(0).choice(n, POINTS, replace=False))


def _call(
    data: dict[str, Any],
    forget: np.ndarray[Any, Any],
    cut: str | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    result = unlearn(
        data["raw"],
        data["x_train"],
        data["y_train"],
        forget_indices=forget,
        gate="routed",
        threads=1,
        retained_accuracy=False,
        cut=cut,
        solver_steps=steps,
    )
    summary = result.summary
    return {
        "call_seconds": time.perf_counter() - start,
        "prepare_seconds": float(summary["seconds_prepare"]),
        "solve_seconds": float(summary["seconds_solve"]),
        "push_mean": float(summary["patch_delta_mean"]),
        "certified": int(summary["certified"]),
    }


def steps_sweep(data: dict[str, Any], forget: np.ndarray[Any, Any]) -> list[dict[str, Any]]:
    rows = []
    for steps in (6, 4, 3, 2, 1, 0):
        _call(data, forget[:5], steps=steps)
        rows.append({"steps": steps, **_call(data, forget, steps=steps)})
        print(f"[bench_ascent] steps {steps}: {rows[-1]}", file=sys.stderr)
    return rows


def _first_batch(data: dict[str, Any], forget: np.ndarray[Any, Any]) -> tuple[Any, Any, Any]:
    """The regions, objectives and starting multipliers of the solve's first batch."""
    grabbed: list[tuple[Any, Any, Any]] = []
    original = lagrangian.LagrangianSolver._tightened

    def grab(self: Any, regions: Any, obj: Any, init: torch.Tensor) -> torch.Tensor:
        grabbed.append((regions, obj, init.clone()))
        return original(self, regions, obj, init)

    lagrangian.LagrangianSolver._tightened = grab  # type: ignore[method-assign]
    try:
        _call(data, forget)
    finally:
        lagrangian.LagrangianSolver._tightened = original  # type: ignore[method-assign]
    return grabbed[0]


def rows_needed(regions: Any, obj: Any, init: torch.Tensor) -> dict[str, Any]:
    inputs = obj.inputs(regions, gemm=torch.float32)
    bounds = {}
    for steps in (0, 1, 2, 3, 4, 6, 10):
        solver = lagrangian.LagrangianSolver(steps=steps)
        lam, _ = solver._ascend(regions, inputs, init=init, gemm=torch.float32)
        bounds[steps] = obj.bound(regions, lam)
    final = bounds[6].max(dim=1, keepdim=True).values
    needed = {
        str(k): float((bounds[k] > final - 0.03 * final.abs()).float().mean())
        for k in (0, 1, 2, 3, 4)
    }
    return {
        "regions": int(init.shape[0]),
        "rows": int(init.shape[0] * init.shape[1]),
        "needed_after_k_steps": needed,
        "mean_region_bound": {str(k): float(v.max(dim=1).values.mean()) for k, v in bounds.items()},
    }


def sign_flips(regions: Any, obj: Any, init: torch.Tensor, steps: int = 7) -> list[float]:
    """Replays the default ascent (``LagrangianSolver._ascend``, float32) and records how many
    coordinates of ``sign(r)`` change per step."""
    solver = lagrangian.LagrangianSolver()
    inputs = obj.inputs(regions, gemm=torch.float32)
    box, op = regions.box, regions.operator(torch.float32)
    g_norm = op.row_scales().clamp_min(1e-12).unsqueeze(1)
    w_norm = inputs.norm(dim=2, keepdim=True).clamp_min(1e-12)
    scale = -op.sign.unsqueeze(1) / g_norm
    h32 = regions.h.to(torch.float32).unsqueeze(1) / g_norm
    w32 = inputs / w_norm
    lam = (init * g_norm.to(torch.float64) / w_norm).to(torch.float32).clamp_min(0.0)
    m1, m2 = torch.zeros_like(lam), torch.zeros_like(lam)
    flips: list[float] = []
    previous = None
    for k in range(1, steps + 1):
        sign = torch.sign(w32 - op.linear_transpose(lam * scale))
        if previous is not None:
            flips.append(float((sign != previous).float().mean()))
        previous = sign
        grad = h32 - op.linear(sign * box.radius + box.mid) * scale
        m1.lerp_(grad, 0.1)
        m2.mul_(0.999).addcmul_(grad, grad, value=0.001)
        denom = m2.mul(1 / (1 - 0.999**k)).sqrt_().add_(1e-8)
        lam.addcdiv_(m1, denom, value=-solver.lr / (1 - 0.9**k)).clamp_(min=0.0)
    return flips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, default=Path("benchmarks/runs/patch-fashion-mnist/work")
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--cut",
        action="append",
        default=None,
        help="also run the default solver with this cut (repeatable; default /0/Gemm_output_0)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = _load(args.work)
    forget = _forget(len(data["y_train"]))
    load_before = os.getloadavg()
    steps = steps_sweep(data, forget)
    cuts = []
    for cut in args.cut or ["/0/Gemm_output_0"]:
        _call(data, forget[:5], cut)
        cuts.append({"cut": cut, **_call(data, forget, cut)})
        print(f"[bench_ascent] cut {cut}: {cuts[-1]}", file=sys.stderr)
    regions, obj, init = _first_batch(data, forget)
    doc = {
        "version": 1,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": 1},
        "load_average_before": load_before,
        "points": POINTS,
        "steps": steps,
        "cuts": cuts,
        "rows": rows_needed(regions, obj, init),
        "sign_flips_per_step": sign_flips(regions, obj, init),
        "load_average_after": os.getloadavg(),
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(args.out)
    print(
        json.dumps({k: doc[k] for k in ("steps", "cuts", "rows", "sign_flips_per_step")}, indent=1)
    )


if __name__ == "__main__":
    main()
