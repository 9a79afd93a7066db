"""Do proofs made with the LP solvers pass ``region.certificate``? (issue 11, item 3)

The region certificate's multipliers come from the Lagrangian dual ascent
(:func:`prune.proofs.region_duals`) whatever solver chose the patch. The LP solvers
(``scale-shift``, the PRUNE reference heuristic, and ``reassure``, the minimal patch) produce
patches that are tighter than the Lagrangian solver's, so their certified margin leaves less
room for inexact multipliers: this measures, on a few digits points per seed, whether the honest
owner's proof still proves every certified claim, and the certificate's slack.

Setup per seed: ``prune train --dataset digits --arch mlp`` (``prune.train``, default recipe),
``POINTS`` training points drawn from the seed, ``prune unlearn --solver S --key`` for each
solver (``lagrangian`` as the control), then ``audit verify`` with every check but membership
(``--original``, ``--forget``, ``--reference`` the test split).

Run: ``python benchmarks/bench_lp_certificate.py [--seeds 0 1 2] [--points 6]``
(writes benchmarks/results/certificate-lp-solvers.json)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.verify import VerifyInputs, verify_proof
from prune.data import load_dataset, save_npz
from prune.proofs import generate_keys, write_signed_proof
from prune.train import DEFAULT_EPOCHS, DEFAULT_HIDDEN, TrainConfig, export_onnx, train
from prune.unlearn import unlearn

RESULTS = Path(__file__).parent / "results" / "certificate-lp-solvers.json"
SOLVERS = ("lagrangian", "scale-shift", "reassure")


def _setting(root: Path, seed: int) -> tuple[bytes, Any, Any, Any, Any]:
    data = load_dataset("digits", seed=seed)
    model, result = train(
        data,
        TrainConfig(
            arch="mlp", hidden=DEFAULT_HIDDEN["digits"], epochs=DEFAULT_EPOCHS["digits"], seed=seed
        ),
    )
    export_onnx(model, root / "model.onnx", input_shape=result.input_shape)
    x_tr = data.x_train.reshape(len(data.x_train), -1)
    x_te = data.x_test.reshape(len(data.x_test), -1)
    save_npz(root / "test.npz", x_te, data.y_test)
    return (root / "model.onnx").read_bytes(), x_tr, data.y_train, x_te, data.y_test


def run(seeds: list[int], points: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory(prefix="lp-cert-") as tmp:
        keys = generate_keys(Path(tmp) / "keys")
        for seed in seeds:
            root = Path(tmp) / f"seed-{seed}"
            root.mkdir()
            original, x_tr, y_tr, x_te, y_te = _setting(root, seed)
            rows_idx = np.random.default_rng([seed, 7]).choice(len(y_tr), points, replace=False)
            for solver in SOLVERS:
                proof = root / solver
                proof.mkdir()
                start = time.process_time()
                result = unlearn(
                    original,
                    x_tr,
                    y_tr,
                    forget_indices=rows_idx,
                    x_test=x_te,
                    y_test=y_te,
                    solver=solver,
                    seed=seed,
                )
                unlearn_cpu = time.process_time() - start
                (proof / "model.onnx").write_bytes(result.patched_model)
                now = datetime.now(UTC)
                write_signed_proof(
                    proof,
                    result=result,
                    original_model=original,
                    key_path=keys.private_key,
                    now=now - timedelta(minutes=1),
                )
                report = verify_proof(
                    VerifyInputs(
                        proof=proof,
                        public_key=keys.public_key,
                        original=root / "model.onnx",
                        forget=proof / "forget.npz",
                        reference=root / "test.npz",
                    ),
                    now=now,
                    rng=np.random.default_rng([seed, 1]),
                )
                outcomes = {o.name: o for o in report.outcomes}
                cert = outcomes["region.certificate"]
                rows.append(
                    {
                        "seed": seed,
                        "solver": solver,
                        "points": points,
                        "claims": len(result.claims),
                        "certified_claims": sum(c.region == "certified" for c in result.claims),
                        "failed_points": len(result.failed),
                        "unlearn_cpu_seconds": round(unlearn_cpu, 2),
                        "region_certificate": cert.status,
                        "region_certificate_detail": cert.detail,
                        "min_slack": cert.evidence.get("min_slack"),
                        "verdict": report.verdict,
                        "failed_checks": [o.name for o in report.failures],
                    }
                )
                print(
                    f"seed {seed} {solver:<12} claims {rows[-1]['claims']} "
                    f"region.certificate {cert.status} (min slack {rows[-1]['min_slack']}) "
                    f"verdict {report.verdict}",
                    flush=True,
                )
    return {
        "version": 1,
        "type": "https://prune-audit.dev/bench/verify-lp-solvers/v1",
        "command": "python benchmarks/bench_lp_certificate.py "
        + f"--seeds {' '.join(map(str, seeds))} --points {points}",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "setting": "digits MLP 64-64 (prune train defaults), sample deletion",
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "all_pass": all(r["region_certificate"] == "pass" for r in rows),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--points", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    doc = run(args.seeds, args.points)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}: region.certificate passes on every proof: {doc['all_pass']}")


if __name__ == "__main__":
    main()
