"""Class deletion, end to end through the CLIs (issue 14): `audit verify` on the class proofs.

For each model of the class benchmark (digits MLP, Fashion-MNIST MLP and CNN; the study's cached
originals under benchmarks/runs/study, built when missing) and its three classes K:

* ``prune unlearn ORIGINAL --forget-class K --key KEY`` (default: suppress mode), then
  ``audit verify PROOF --expect-class K`` with the original, the forget openings and the test
  split as the auditor's reference data: expected exit 0;
* ``prune unlearn ... --forget-class K --class-mode regions`` (the region-only mode, the class's
  training regions only), then the same ``audit verify``: expected exit 1, failed by
  ``class.reference`` because the auditor's class-K data still gets class K.

Each command runs in its own process; exit status, wall time, the failed checks and the share
of the auditor's class-K samples still given K are recorded.

Run: ``nice -n 10 python benchmarks/bench_class_verify.py`` (``--models``, ``--out``); writes
benchmarks/results/class-verify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.study.artifacts import BUILDERS, ArtifactKey

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "runs" / "study"
CLASSES = {"digits-mlp": (3, 5, 8), "fashion-mnist-mlp": (2, 5, 7), "fashion-mnist-cnn": (2, 5, 7)}


def _run(args: list[str]) -> tuple[int, float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    tail = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, round(time.perf_counter() - start, 2), tail[-1] if tail else ""


def _verify(proof: Path, keys: Path, original: Path, k: int) -> dict[str, Any]:
    report = proof.parent / (proof.name + "-report.json")
    code, wall, last = _run(
        [
            "audit",
            "verify",
            str(proof),
            "--public-key",
            str(keys / "owner.pub"),
            "--original",
            str(original / "model.onnx"),
            "--forget",
            str(proof / "forget.npz"),
            "--reference",
            str(original / "test.npz"),
            "--expect-class",
            str(k),
            "--json",
            str(report),
        ]
    )
    doc = json.loads(report.read_text()) if report.exists() else {}
    outcomes = doc.get("checks") or doc.get("outcomes") or []
    failed = [o.get("name") for o in outcomes if o.get("status") == "fail"]
    reference = next((o for o in outcomes if o.get("name") == "class.reference"), {})
    return {
        "exit": code,
        "wall_s": wall,
        "verdict_line": last,
        "failed": failed,
        "class_reference": reference.get("detail"),
    }


def _case(model: str, k: int, original: Path, keys: Path, scratch: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "class": k}
    for mode in ("suppress", "regions"):
        proof = scratch / f"{model}-{k}-{mode}"
        code, wall, last = _run(
            [
                "prune",
                "unlearn",
                str(original / "model.onnx"),
                "--train",
                str(original / "train.npz"),
                "--test",
                str(original / "test.npz"),
                "--forget-class",
                str(k),
                "--class-mode",
                mode,
                "--key",
                str(keys / "owner.key"),
                "--out",
                str(proof),
                "--quiet",
            ]
        )
        entry: dict[str, Any] = {"unlearn_exit": code, "unlearn_wall_s": wall, "unlearn": last}
        if code == 0:
            entry["verify"] = _verify(proof, keys, original, k)
        row[mode] = entry
        print(f"[class-verify] {model} class {k} {mode}: {json.dumps(entry)}", file=sys.stderr)
    row["as_expected"] = (
        row["suppress"].get("verify", {}).get("exit") == 0
        and row["regions"].get("verify", {}).get("exit") == 1
        and "class.reference" in row["regions"].get("verify", {}).get("failed", [])
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CLASSES))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/class-verify.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="class-verify-") as tmp:
        scratch = Path(tmp)
        keys = scratch / "keys"
        code, _, last = _run(["prune", "keygen", "--out", str(keys)])
        if code != 0:
            raise SystemExit(f"prune keygen failed: {last}")
        for model in args.models.split(","):
            dataset, arch = model.rsplit("-", 1)
            key = ArtifactKey(kind="original", dataset=dataset, arch=arch, seed=0)
            if not key.ready(WORK):
                BUILDERS["original"](key, WORK)
            for k in CLASSES[model]:
                rows.append(_case(model, k, key.folder(WORK), keys, scratch))
    doc = {
        "benchmark": "class-verify",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_class_verify.py " + " ".join(sys.argv[1:]),
        "load_end": dict(zip(("1min", "5min", "15min"), os.getloadavg(), strict=True)),
        "rows": rows,
        "all_as_expected": all(r["as_expected"] for r in rows),
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}: all as expected: {doc['all_as_expected']}")


if __name__ == "__main__":
    main()
