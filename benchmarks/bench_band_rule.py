"""What does the thin-band rule (threat 22, ``structure.patch``) cost on the largest proofs the
verifier admits?

The rule compares every claim's region with every other patch's gate pattern: ``P^2 H`` sign
comparisons for ``P`` patches over ``H`` neurons. A 512 MiB model (the size limit) can hold an
activation gate with ``H P`` up to about 1.3e8 pattern entries, so a hostile owner can ask for
``P^2 H`` around 1e12 to 4e12. The rule counts the pairs by float32 matrix products in blocks
(:func:`audit.verify._bands.mismatches`); this measures its wall time and the process's peak resident memory (inputs included) on
synthetic heads at those sizes, in two shapes:

* ``first``: random gate patterns; first-layer neurons settle every pair (the honest shape);
* ``deep``: every pattern agrees on the first layer, so every claim's region also needs its
  deeper rows (one :meth:`AffineHead.local_affine` per claim) and a second set of products.

The pair-by-pair loop it replaced (main before this change) took about ``P^2 H`` numpy
element operations several times over; ``--legacy`` runs that code (from git) on the smallest
case for comparison.

Run: ``python benchmarks/bench_band_rule.py [--cases S ...] [--legacy]``
(writes benchmarks/results/band-rule.json)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.verify._affine import AffineHead
from audit.verify._bands import wide_band

RESULTS = Path(__file__).parent / "results" / "band-rule.json"
CASES = {  # name: (input dim, hidden sizes, patches)
    "small": (784, (256, 256), 2048),
    "medium": (784, (1024, 1024), 8192),
    "limit": (784, (4096,), 32768),
}


def _head(rng: np.random.Generator, dim: int, sizes: tuple[int, ...]) -> AffineHead:
    shapes = list(zip((*sizes, 10), (dim, *sizes), strict=True))
    weights = tuple(rng.normal(size=s).astype(np.float64) / np.sqrt(s[1]) for s in shapes)
    biases = tuple(rng.normal(size=s[0]) * 0.1 for s in shapes)
    return AffineHead(weights=weights, biases=biases)


def _inputs(name: str, shape: str, seed: int) -> tuple[AffineHead, Any, Any, Any]:
    dim, sizes, patches = CASES[name]
    rng = np.random.default_rng(seed)
    head = _head(rng, dim, sizes)
    x = rng.random((patches, dim))
    z, _ = head.forward(x)
    active = z >= 0
    patterns = active.copy()
    if shape == "deep":  # one first-layer pattern for all: only deeper neurons separate them
        patterns[:, : sizes[0]] = active[0, : sizes[0]]
        active = patterns.copy()
    return head, x, active, patterns


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, shape: str, seed: int) -> dict[str, Any]:
    head, x, active, patterns = _inputs(name, shape, seed)
    patch = np.arange(len(patterns), dtype=np.int64)
    start = time.perf_counter()
    problem = wide_band(head, (0.0, 1.0), x, active, patch, patterns, n=1000.0)
    wall = time.perf_counter() - start
    dim, sizes, patches = CASES[name]
    return {
        "case": name,
        "shape": shape,
        "rule": "blocked products",
        "dim": dim,
        "hidden": list(sizes),
        "patches": patches,
        "pair_neuron_products": patches**2 * sum(sizes),
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(_peak_mib(), 1),
        "verdict": "bounded" if problem is None else problem[:120],
    }


LEGACY = "8905ede"
"""The last commit with the pair-by-pair loop."""


def legacy(name: str, shape: str, seed: int) -> dict[str, Any]:
    """The same case through the rule as it was at ``LEGACY`` (read from git, run unchanged)."""
    source = subprocess.run(
        ["git", "show", f"{LEGACY}:audit/verify/_bands.py"],
        cwd=Path(__file__).resolve().parents[1],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("legacy_bands")
    exec(compile(source, f"{LEGACY}:audit/verify/_bands.py", "exec"), module.__dict__)
    head, x, active, patterns = _inputs(name, shape, seed)
    patch = np.arange(len(patterns), dtype=np.int64)
    start = time.perf_counter()
    problem = module.wide_band(head, (0.0, 1.0), x, active, patch, patterns, n=1000.0)
    return {
        "case": name,
        "shape": shape,
        "rule": f"legacy {LEGACY}",
        "wall_s": round(time.perf_counter() - start, 2),
        "verdict": "bounded" if problem is None else problem[:120],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--shapes", nargs="+", default=["first", "deep"])
    parser.add_argument("--legacy", action="store_true", help="also time the old loop (small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for name in args.cases:
        for shape in args.shapes:
            if shape == "deep" and len(CASES[name][1]) < 2:
                continue
            row = measure(name, shape, args.seed)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.legacy:
        for shape in args.shapes:
            row = legacy("small", shape, args.seed)
            print(json.dumps(row), flush=True)
            rows.append(row)
    record = {
        "command": "python benchmarks/bench_band_rule.py " + " ".join(sys.argv[1:]),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "cpu": os.cpu_count(),
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
