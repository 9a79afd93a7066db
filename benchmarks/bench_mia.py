"""Membership-inference benchmark: the issue's timing targets and the recorded U-MIA results.

For each data set (digits, Fashion-MNIST):

1. The owner's side, with the owner's own recipe (``prune.train``, default widths and epochs):
   the target MLP trains on a random subset of the training split (600 digits / 20,000
   Fashion-MNIST images). The rest of the training split is the auditor's reference data
   (disjoint from the target's training data; its halves are about the target's training size,
   which is what calibrated reference models need). The test split is the non-members.
2. ``prune unlearn`` patches the target to forget a random forget set of training rows (the CLI,
   as an owner would run it); the retrained model is ``prune.train`` on the training subset
   minus the forget set, same recipe and seed (the gold standard).
3. The auditor (``audit.mia``) trains 8 reference models with the target's architecture, read
   from the ONNX graph, and the owner's epochs; timed: LiRA offline end to end (training the 8
   models, scoring members and non-members, metrics with 1,000 bootstrap replicates), with the
   peak resident memory of the whole process tree (sampled from /proc every 50 ms).
4. With the same reference models, every attack plays (a) members vs non-members on the
   original model and (b) U-MIA: the forget set vs non-members on the original, the patched and
   the retrained model.

Targets: LiRA offline with 8 reference models <= 60 s (digits), <= 600 s (Fashion-MNIST MLP) on
a 2-core CPU.

Run: ``python benchmarks/bench_mia.py [--dataset digits|fashion-mnist|all] [--jobs 2]``
(writes benchmarks/results/mia-<dataset>.json; work files go to benchmarks/runs/mia-<dataset>/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from audit.mia import (
    ATTACKS,
    LabelledData,
    LiraAttack,
    MiaConfig,
    TrainingRecipe,
    build_attacks,
    evaluate,
    resolve_architecture,
    run_game,
    train_reference_models,
)
from audit.runtime import OnnxModel
from prune.data import Dataset, load_dataset, load_npz
from prune.train import DEFAULT_EPOCHS, DEFAULT_HIDDEN, TrainConfig, model_input, train_to_folder

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parent / "runs"


@dataclass(frozen=True)
class Plan:
    dataset: str
    target_size: int
    forget_size: int
    member_sample: int
    target_s: float


PLANS = {
    "digits": Plan("digits", 600, 50, 600, 60.0),
    "fashion-mnist": Plan("fashion-mnist", 20_000, 100, 10_000, 600.0),
}


class PeakRss:
    """Peak summed RSS (MiB) of this process and all its descendants, sampled from /proc."""

    def __init__(self, period: float = 0.05) -> None:
        self.period, self.peak, self._stop = period, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_mb(os.getpid()))
            self._stop.wait(self.period)


def _tree_rss_mb(root: int) -> float:
    children: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields["PPid"].strip()), []).append(pid)
        rss[pid] = float(fields.get("VmRSS", "0 kB").split()[0]) / 1024.0
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def owner_side(plan: Plan, work: Path, seed: int) -> dict[str, Any]:
    """Target, patched and retrained models plus the data files, as the owner would make them."""
    data = load_dataset(plan.dataset, seed=seed)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(data.x_train))
    target_rows, reference_rows = perm[: plan.target_size], perm[plan.target_size :]
    config = TrainConfig(
        arch="mlp",
        hidden=DEFAULT_HIDDEN[plan.dataset],
        epochs=DEFAULT_EPOCHS[plan.dataset],
        seed=seed,
    )
    subset = Dataset(
        data.name, data.x_train[target_rows], data.y_train[target_rows], data.x_test, data.y_test
    )
    original = train_to_folder(subset, config, work / "original")
    forget = np.sort(rng.choice(plan.target_size, size=plan.forget_size, replace=False))
    (work / "forget.txt").write_text("".join(f"{i}\n" for i in forget))
    keep = np.setdiff1d(np.arange(plan.target_size), forget)
    retrained = train_to_folder(
        Dataset(data.name, subset.x_train[keep], subset.y_train[keep], data.x_test, data.y_test),
        config,
        work / "retrained",
    )
    np.savez(
        work / "reference.npz",
        x=model_input("mlp", data.x_train[reference_rows]),
        y=data.y_train[reference_rows],
    )
    start = time.perf_counter()
    subprocess.run(
        [
            shutil.which("prune") or "prune",
            "unlearn",
            str(work / "original" / "model.onnx"),
            "--train",
            str(work / "original" / "train.npz"),
            "--forget-indices",
            str(work / "forget.txt"),
            "--test",
            str(work / "original" / "test.npz"),
            "--out",
            str(work / "proof"),
            "--quiet",
        ],
        check=True,
    )
    unlearn_s = time.perf_counter() - start
    summary = json.loads((work / "proof" / "summary.json").read_text())
    return {
        "train_size": plan.target_size,
        "reference_size": len(reference_rows),
        "forget_size": plan.forget_size,
        "recipe": {"hidden": list(config.hidden), "epochs": config.epochs, "seed": seed},
        "original": {
            "train_accuracy": original.train_accuracy,
            "test_accuracy": original.test_accuracy,
        },
        "retrained": {
            "train_accuracy": retrained.train_accuracy,
            "test_accuracy": retrained.test_accuracy,
        },
        "prune_unlearn": {"wall_s": round(unlearn_s, 2), "summary": summary},
    }


def auditor_side(plan: Plan, work: Path, seed: int, jobs: int) -> dict[str, Any]:
    train_x, train_y = load_npz(work / "original" / "train.npz")
    test_x, test_y = load_npz(work / "original" / "test.npz")
    ref_x, ref_y = load_npz(work / "reference.npz")
    forget_rows = np.loadtxt(work / "forget.txt", dtype=np.int64, ndmin=1)
    rng = np.random.default_rng(seed)
    member_rows = np.sort(rng.permutation(len(train_x))[: plan.member_sample])
    members = LabelledData(train_x[member_rows], train_y[member_rows])
    non_members = LabelledData(test_x, test_y)
    forget = LabelledData(train_x[forget_rows], train_y[forget_rows])
    models = {
        name: OnnxModel(path).logits
        for name, path in (
            ("original", work / "original" / "model.onnx"),
            ("patched", work / "proof" / "model.onnx"),
            ("retrained", work / "retrained" / "model.onnx"),
        )
    }
    arch = resolve_architecture(
        onnx_model=work / "original" / "model.onnx",
        declared=None,
        input_shape=tuple(ref_x.shape[1:]),
        classes=int(models["original"](ref_x[:1]).shape[1]),
    )
    recipe = TrainingRecipe(epochs=DEFAULT_EPOCHS[plan.dataset])
    config = MiaConfig(reference_models=8, recipe=recipe, seed=seed, jobs=jobs)

    with PeakRss() as rss:
        start = time.perf_counter()
        refs = train_reference_models(
            ref_x,
            ref_y,
            architecture=arch,
            count=config.reference_models,
            recipe=recipe,
            seed=seed,
            jobs=jobs,
            backend="loky",
            progress=sys.stderr.isatty(),
        )
        trained_s = time.perf_counter() - start
        lira = LiraAttack(variant="offline", variance="fixed").fit(reference=refs)
        scores = (
            lira.score(models["original"], members.x, members.y),
            lira.score(models["original"], non_members.x, non_members.y),
        )
        lira_metrics = evaluate(*scores, bootstrap=1000, rng=np.random.default_rng(seed))
        lira_s = time.perf_counter() - start
    timing = {
        "what": "LiRA offline, 8 reference models: train them, score members and non-members "
        "on the original model, metrics with 1000 bootstrap replicates",
        "seconds": round(lira_s, 2),
        "training_seconds": round(trained_s, 2),
        "target_s": plan.target_s,
        "meets_target": lira_s <= plan.target_s,
        "peak_rss_mb": round(rss.peak, 1),
        "jobs": jobs,
        "backend": "loky",
        "lira_auc": lira_metrics.auc.value,
        "sklearn_auc_same_scores": _sklearn_auc(*scores),
    }
    attacks = build_attacks(config)
    classic = run_game(
        {"original": models["original"]},
        members,
        non_members,
        attacks=attacks,
        reference=refs,
        seed=seed,
        bootstrap=config.bootstrap,
        roc_points=200,
    )
    unlearning = run_game(
        models,
        forget,
        non_members,
        attacks=build_attacks(config),
        reference=refs,
        game="forget-vs-non-members",
        seed=seed,
        bootstrap=config.bootstrap,
        roc_points=200,
    )
    return {
        "timing": timing,
        "members_vs_non_members": classic.to_json(),
        "forget_vs_non_members": unlearning.to_json(),
    }


def _sklearn_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """An independent AUC of the same LiRA scores (scikit-learn), recorded as a cross-check."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _git_head() -> str:
    """The commit the run used, with '+dirty' when the working tree had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def table(doc: dict[str, Any]) -> str:
    lines = []
    for game in ("members_vs_non_members", "forget_vs_non_members"):
        for label, model in doc[game]["models"].items():
            for name, m in model["attacks"].items():
                lines.append(
                    f"{game:24s} {label:9s} {name:10s} AUC {m['auc']['value']:.3f} "
                    f"TPR@1% {m['tpr_at_fpr']['0.01']['value']:.3f} "
                    f"TPR@0.1% {m['tpr_at_fpr']['0.001']['value']:.3f} "
                    f"revTPR@1% {m['reverse_tpr_at_fpr']['0.01']['value']:.3f}"
                )
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    """The recorded results as the Markdown tables of docs/MIA.md."""

    def cell(e: dict[str, float]) -> str:
        return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    out = []
    for game, title in (
        ("members_vs_non_members", "members vs non-members"),
        ("forget_vs_non_members", "forget set vs non-members (U-MIA)"),
    ):
        g = doc[game]
        out += [
            f"{doc['dataset']}, {title}: {g['members']} vs {g['non_members']}",
            "",
            "| model | attack | AUC [95% CI] | TPR@1%FPR | TPR@0.1%FPR | reversed TPR@1%FPR |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for label, model in g["models"].items():
            for name in [a for a in ATTACKS if a in model["attacks"]]:
                m = model["attacks"][name]
                out.append(
                    f"| {label} | {name} | {cell(m['auc'])} | {cell(m['tpr_at_fpr']['0.01'])} | "
                    f"{cell(m['tpr_at_fpr']['0.001'])} | {cell(m['reverse_tpr_at_fpr']['0.01'])} |"
                )
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=[*PLANS, "all"], default="all")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="Print the recorded results as Markdown; run nothing.",
    )
    args = parser.parse_args()
    names = list(PLANS) if args.dataset == "all" else [args.dataset]
    if args.markdown:
        for name in names:
            print(markdown(json.loads((RESULTS / f"mia-{name}.json").read_text())))
        return
    for name in names:
        plan = PLANS[name]
        work = RUNS / f"mia-{name}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        load_start = round(os.getloadavg()[0], 2)
        start = time.perf_counter()
        owner = owner_side(plan, work, args.seed)
        auditor = auditor_side(plan, work, args.seed, args.jobs)
        doc = {
            "version": 1,
            "type": "https://prune-audit.dev/bench/mia/v1",
            "dataset": name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load_average_1min_at_start": load_start,
                "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            },
            "command": f"python benchmarks/bench_mia.py --dataset {name} --jobs {args.jobs} --seed {args.seed}",
            "git_commit": _git_head(),
            "total_seconds": round(time.perf_counter() - start, 1),
            "owner": owner,
            **auditor,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"mia-{name}.json"
        out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(json.dumps(doc["timing"], indent=1))
        print(table(doc))
        print(f"-> {out}")


if __name__ == "__main__":
    main()
