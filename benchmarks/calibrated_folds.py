"""Issue 13 experiment: does ``prune prepare`` with more folds bring calibrated targets closer to
retraining?

With K folds each fold model trains on (K - 1)/K of the training data, so the out-logits a
calibrated target is built from come from a model weaker than the original (and than a model
retrained without a few points). This runs one calibrated cell of the study (same forget set,
MIA reference models, non-members and metrics as ``python -m benchmarks.study run --config
calibrated``) with a prepared set of ``--folds`` folds instead of the study's 5, in a scratch work
folder whose ``original`` and ``mia-refs`` artifacts link to the study's (so the model and the
attacks are the recorded ones); the reference retrain and the prepared set are built there.

Run: ``python benchmarks/calibrated_folds.py --folds 10 --seed 0 --setting random-100
--out FILE`` (the study's calibrated artifacts must exist in ``--study-work``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks.study.artifacts as artifacts
from benchmarks.study.cell import run_cell
from benchmarks.study.plan import cells_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--setting", default="random-100")
    parser.add_argument("--study-work", type=Path, default=Path("benchmarks/runs/calibrated"))
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (created)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    name = f"{args.dataset}-{args.arch}-s{args.seed}"
    for kind in ("original", "mia-refs"):
        source = (args.study_work / kind / name).resolve()
        if not (source / "meta.json").is_file():
            sys.exit(f"calibrated_folds: no study artifact {source}")
        link = args.work / kind / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(source)
    artifacts.PREPARE_FOLDS = args.folds  # read by the prepared builder when it runs
    built: dict[str, float] = {}
    for kind, setting in (("prepared", None), ("reference", args.setting)):
        key = artifacts.ArtifactKey(
            kind=kind, dataset=args.dataset, arch=args.arch, seed=args.seed, setting=setting
        )
        if not key.ready(args.work):
            start = time.perf_counter()
            print(f"[calibrated_folds] building {kind}", file=sys.stderr)
            artifacts.BUILDERS[kind](key, args.work)
            built[kind] = round(time.perf_counter() - start, 1)
    cells = [
        c
        for c in cells_for("calibrated")
        if (c.dataset, c.arch, c.setting, c.seed)
        == (args.dataset, args.arch, args.setting, args.seed)
        and c.variant.label == "prune[target=calibrated]"
    ]
    if len(cells) != 1:
        sys.exit(f"calibrated_folds: {len(cells)} matching cells in the calibrated config")
    doc: dict[str, Any] = run_cell(cells[0], work=args.work, threads=1)
    doc["folds"] = args.folds
    doc["built_seconds"] = built
    args.out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    mia = doc["mia"] or {}
    print(
        json.dumps(
            {
                "folds": args.folds,
                "forget_accuracy": doc["accuracy"]["after"]["forget"],
                "test_change": doc["accuracy"]["after"]["test"] - doc["accuracy"]["before"]["test"],
                "kl_forget": doc["kl_to_retrained"]["forget"],
                "mia": {
                    k: {m: v.get(m) for m in ("auc", "reverse_tpr_at_1pct")}
                    for k, v in mia.items()
                    if isinstance(v, dict) and "auc" in v
                },
            },
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
