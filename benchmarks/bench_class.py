"""Class-unlearning benchmark (issue 14): class suppression against retraining without the class.

For each model (digits MLP, Fashion-MNIST MLP and CNN; the study's recipes and cached originals
under benchmarks/runs/study) and three classes K each:

* ``prune.unlearn(..., forget_class=K)`` (suppress mode, form v2 with the default proxy budget,
  default margin), timed end to end (wall and process CPU; the summary splits the time into the
  original's pass, the remap, export, replay and the utility evaluation); class-K test and
  training accuracy after, every other class's test accuracy before/after;
* two models retrained without K (seeds 1 and 2, the original's recipe): the seed-to-seed floor
  ``KL(r1 || r2)`` (and ``KL(r2 || r1)``) on the class-K test inputs, against
  ``KL(r_s || patched)``; the same KL for form v1 (no remap) and other margins, computed with
  the suppression formula in float32 numpy (bit-identical to onnxruntime, checked by
  ``audit verify``);
* CMIA and RMIA (the study's 4 cached reference models), class-K training samples (members)
  against the class-K samples of the non-member half of the test split, on the original, the
  patched and the first retrained model: AUC with 95 % bootstrap intervals;
* inference CPU time of the patched model (v2, and v1 for comparison) against the original
  (the study's method).

Run: ``nice -n 10 python benchmarks/bench_class.py --model digits-mlp`` (also
``fashion-mnist-mlp``, ``fashion-mnist-cnn``); writes benchmarks/results/class-<model>.json.
``--timing-only`` runs only the unlearning calls and the inference ratios (no retraining, no
MIA) and writes class-<model>-timing.json: the quiet-machine re-run of the time targets.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.mia import LabelledData, make_attack, run_game
from audit.verify._class import suppress_logits
from benchmarks.study.artifacts import (
    BUILDERS,
    ArtifactKey,
    load_mia_references,
    load_original,
    mia_non_member_rows,
)
from benchmarks.study.common import machine
from benchmarks.study.evaluate import inference_overhead, kl_divergence, logits
from prune.baselines._recipe import fit
from prune.train import export_onnx
from prune.unlearn import DEFAULT_CLASS_MARGIN, DEFAULT_PROXY_BUDGET, unlearn

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "runs" / "study"
CLASSES = {"digits-mlp": (3, 5, 8), "fashion-mnist-mlp": (2, 5, 7), "fashion-mnist-cnn": (2, 5, 7)}
RETRAIN_SEEDS = (1, 2)
MARGINS = (0.1, 1.0, 2.0, 4.0, 8.0, 16.0)
RESULTS = REPO / "benchmarks" / "results"
"""Where the JSON results go (``--results``: elsewhere, e.g. a scratch folder, so that a trial run
does not overwrite the recorded ones)."""


def _ensure(key: ArtifactKey) -> None:
    if not key.ready(WORK):
        BUILDERS[key.kind](key, WORK)


def _retrained(orig: Any, dataset: str, arch: str, k: int, seed: int) -> bytes:
    folder = WORK / "class-retrain" / f"{dataset}-{arch}-class-{k}-s{seed}"
    path = folder / "model.onnx"
    lock = folder / "training.lock"  # another process (--retrain-only) is training this one
    while lock.is_file() and not path.is_file():
        time.sleep(10)
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        lock.write_text(f"{os.getpid()}\n")
        keep = np.flatnonzero(orig.y_train != k)
        start = time.perf_counter()
        model = fit(orig.recipe, orig.x_train[keep], orig.y_train[keep], seed=seed)
        export_onnx(model, folder / "tmp.onnx", input_shape=orig.recipe.input_shape)
        (folder / "seconds.txt").write_text(f"{time.perf_counter() - start:.3f}\n")
        (folder / "tmp.onnx").replace(path)
        lock.unlink()
    return path.read_bytes()


def _correct(z: np.ndarray, y: np.ndarray, classes: int) -> list[int]:
    return [int(((z.argmax(1) == c) & (y == c)).sum()) for c in range(classes)]


def _per_class(z: np.ndarray, y: np.ndarray, classes: int) -> list[float]:
    return [float((z[y == c].argmax(1) == c).mean()) for c in range(classes)]


def _mia(
    models: dict[str, bytes], members: LabelledData, non: LabelledData, refs: Any
) -> dict[str, Any]:
    from audit.runtime import OnnxModel

    fns = {name: OnnxModel(raw, device="cpu", threads=1).logits for name, raw in models.items()}
    game = run_game(
        fns,
        members,
        non,
        attacks=[make_attack("cmia"), make_attack("rmia", seed=0)],
        reference=refs,
        game="forget-vs-non-members",
        seed=0,
        bootstrap=500,
    )
    return {
        name: {a: game.model(name).attack(a).auc.to_dict() for a in ("cmia", "rmia")}
        for name in models
    }


def _write(model: str, rows: list[dict[str, Any]], *, complete: bool, suffix: str = "") -> Path:
    """Written after every class, so that an interrupted run keeps what it measured."""
    doc = {
        "version": 2,
        "model": model,
        "complete": complete,
        "classes": rows,
        "machine": machine(),
        "loadavg_end": list(os.getloadavg()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"class-{model}{suffix}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def _timed_unlearn(
    orig: Any, k: int, *, remap: bool = True, threads: int | None = 1
) -> tuple[Any, dict[str, Any]]:
    """One class deletion, with wall and process CPU time and the load average. ``threads``:
    torch's and onnxruntime's (None: all cores, the CLI's default)."""
    load = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    result = unlearn(
        orig.onnx,
        orig.x_train,
        orig.y_train,
        forget_class=k,
        class_remap=remap,
        x_test=orig.x_test,
        y_test=orig.y_test,
        threads=threads,
    )
    timing = {
        "threads": threads if threads is not None else os.cpu_count(),
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "loadavg_before": list(load),
        "loadavg_after": list(os.getloadavg()),
        "summary_seconds": {
            key: value for key, value in result.summary.items() if key.startswith("seconds")
        },
        "remap": result.summary.get("remap"),
    }
    return result, timing


def timing(model: str, threads: int | None = 1) -> Path:
    """The time targets only: unlearning each class (form v2, and v1 for comparison) and the
    inference ratios, on the cached original (no retraining, no MIA), with ``threads`` threads
    (None: every core, the CLI's default; the inference ratios always with 1 thread, the
    study's method). One call first (recorded as ``warmup_call``) pays the process's imports
    and lazy init."""
    dataset, _, arch = model.rpartition("-")
    torch.set_num_threads(1)
    _ensure(ArtifactKey(kind="original", dataset=dataset, arch=arch, seed=0))
    orig = load_original(WORK, dataset, arch, 0)
    rows: list[dict[str, Any]] = []
    torch.set_num_threads(threads or os.cpu_count() or 1)
    _, warmup = _timed_unlearn(orig, CLASSES[model][0], threads=threads)  # imports, lazy init
    for k in CLASSES[model]:
        result, v2 = _timed_unlearn(orig, k, threads=threads)
        plain, v1 = _timed_unlearn(orig, k, remap=False, threads=threads)
        x = orig.x_test[:1000]
        rows.append(
            {
                "class": k,
                "warmup_call": warmup if k == CLASSES[model][0] else None,
                "unlearn": v2,
                "unlearn_v1": v1,
                "inference": inference_overhead(orig.onnx, result.patched_model, x, threads=1),
                "inference_v1": inference_overhead(orig.onnx, plain.patched_model, x, threads=1),
                "loadavg": list(os.getloadavg()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        _write(model, rows, complete=False, suffix="-timing")
    return _write(model, rows, complete=True, suffix="-timing")


def run(model: str, order: tuple[int, ...] | None = None) -> Path:
    dataset, _, arch = model.rpartition("-")
    torch.set_num_threads(1)
    for kind in ("original", "mia-refs"):
        _ensure(ArtifactKey(kind=kind, dataset=dataset, arch=arch, seed=0))
    orig = load_original(WORK, dataset, arch, 0)
    refs = load_mia_references(WORK, orig, dataset, arch, 0)
    classes = int(orig.recipe.classes)
    z_test = logits(orig.onnx, orig.x_test, threads=1)
    z_train = logits(orig.onnx, orig.x_train, threads=1)
    before = _per_class(z_test, orig.y_test, classes)
    rows: list[dict[str, Any]] = []
    path = RESULTS / f"class-{model}.json"
    if order and path.is_file():  # --classes: keep the rows of the other classes measured earlier
        kept = json.loads(path.read_text()).get("classes", [])
        rows = [r for r in kept if r["class"] not in order and r.get("patch_form")]
    for k in order or CLASSES[model]:
        result, timed = _timed_unlearn(orig, k)
        patched = result.patched_model
        s = result.summary
        zp_test = logits(patched, orig.x_test, threads=1)
        after = _per_class(zp_test, orig.y_test, classes)
        zp_train = logits(patched, orig.x_train, threads=1)
        zp_train_k = zp_train[orig.y_train == k]
        retrained = [_retrained(orig, dataset, arch, k, seed) for seed in RETRAIN_SEEDS]
        kx = orig.x_test[orig.y_test == k]
        zr = [logits(r, kx, threads=1) for r in retrained]
        zo = z_test[orig.y_test == k]
        plain = suppress_logits(zo.astype(np.float32), k, DEFAULT_CLASS_MARGIN).astype(np.float64)
        kl = {
            "floor_r1_r2": kl_divergence(zr[0], zr[1]),
            "floor_r2_r1": kl_divergence(zr[1], zr[0]),
            "patched": [kl_divergence(r, zp_test[orig.y_test == k]) for r in zr],
            "v1": [kl_divergence(r, plain) for r in zr],
            "original": [kl_divergence(r, zo) for r in zr],
            "by_margin": {
                repr(m): [
                    kl_divergence(
                        r, suppress_logits(zo.astype(np.float32), k, m).astype(np.float64)
                    )
                    for r in zr
                ]
                for m in MARGINS
            },
        }
        floor = 0.5 * (kl["floor_r1_r2"] + kl["floor_r2_r1"])
        kl["ratio_to_floor"] = float(np.mean(kl["patched"]) / floor)
        kl["ratio_v1"] = float(np.mean(kl["v1"]) / floor)
        members_rows = np.flatnonzero(orig.y_train == k)
        non_rows = mia_non_member_rows(f"class-{k}", len(members_rows), orig.y_test, 0)
        mia = _mia(
            {"original": orig.onnx, "patched": patched, "retrained": retrained[0]},
            LabelledData(orig.x_train[members_rows], orig.y_train[members_rows]),
            LabelledData(orig.x_test[non_rows], orig.y_test[non_rows]),
            refs,
        )
        infer = inference_overhead(orig.onnx, patched, orig.x_test[:1000], threads=1)
        others = [c for c in range(classes) if c != k]
        rows.append(
            {
                "class": k,
                "margin": DEFAULT_CLASS_MARGIN,
                "proxy_budget": DEFAULT_PROXY_BUDGET,
                "patch_form": s["patch_form"],
                "unlearn_seconds": s["seconds"],
                "unlearn": timed,
                "class_test_accuracy_before": before[k],
                "class_test_accuracy_after": after[k],
                "class_train_accuracy_after": float((zp_train_k.argmax(1) == k).mean()),
                "class_train_correct_before": round(
                    s["forget_accuracy_before"] * s["forget_points"]
                ),
                "class_test_correct_before": int(
                    ((z_test.argmax(1) == k) & (orig.y_test == k)).sum()
                ),
                "class_test_correct_after": int(
                    ((zp_test.argmax(1) == k) & (orig.y_test == k)).sum()
                ),
                "other_test_accuracy_before": {str(c): before[c] for c in others},
                "other_test_accuracy_after": {str(c): after[c] for c in others},
                "train_correct_before": _correct(z_train, orig.y_train, classes),
                "train_correct_after": _correct(zp_train, orig.y_train, classes),
                "worst_other_change_points": 100 * min(after[c] - before[c] for c in others),
                "kl": kl,
                "mia": mia,
                "inference": infer,
                "retrain_seconds": [
                    float(
                        (
                            WORK
                            / "class-retrain"
                            / f"{dataset}-{arch}-class-{k}-s{sd}"
                            / "seconds.txt"
                        ).read_text()
                    )
                    for sd in RETRAIN_SEEDS
                ],
                "loadavg": list(os.getloadavg()),
            }
        )
        print(
            json.dumps(
                {
                    key: rows[-1][key]
                    for key in (
                        "class",
                        "unlearn_seconds",
                        "class_test_accuracy_after",
                        "worst_other_change_points",
                    )
                }
            ),
            flush=True,
        )
        print(json.dumps(kl), flush=True)
        print(json.dumps(mia), flush=True)
        _write(model, rows, complete=False)
    rows.sort(key=lambda r: int(r["class"]))
    done = {int(r["class"]) for r in rows} >= set(CLASSES[model])
    return _write(model, rows, complete=done)


def _ci(e: dict[str, float]) -> str:
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def table() -> str:
    """The markdown table of docs/BENCHMARKS.md ("Class unlearning") from the recorded results."""
    head = (
        "| model | K | class-K test acc before -> after | class-K train acc after | worst other "
        "class (points) | unlearn s wall / CPU | KL / floor (v2) | KL / floor (v1) | CMIA AUC "
        "patched / retrained | RMIA AUC patched / retrained | inference ratio | load |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for model in CLASSES:
        path = REPO / "benchmarks" / "results" / f"class-{model}.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        for r in doc["classes"]:
            mia, kl = r["mia"], r["kl"]
            lines.append(
                f"| {model} | {r['class']} | {r['class_test_accuracy_before']:.3f} -> "
                f"{r['class_test_accuracy_after']:.3f} | {r['class_train_accuracy_after']:.3f} | "
                f"{r['worst_other_change_points']:+.2f} | {r['unlearn']['wall_s']:.2f} / "
                f"{r['unlearn']['cpu_s']:.2f} | "
                f"{kl['ratio_to_floor']:.2f} (floor {0.5 * (kl['floor_r1_r2'] + kl['floor_r2_r1']):.3f}) | "
                f"{kl['ratio_v1']:.2f} | "
                f"{_ci(mia['patched']['cmia'])} / {_ci(mia['retrained']['cmia'])} | "
                f"{_ci(mia['patched']['rmia'])} / {_ci(mia['retrained']['rmia'])} | "
                f"{r['inference']['ratio']:.2f} | {r['loadavg'][0]:.1f} |"
            )
    return head + "\n".join(lines) + "\n"


def timing_table() -> str:
    """The quiet-machine timing rows (``--timing-only``), when recorded."""
    head = (
        "| model | K | v2 unlearn s wall / CPU | v1 unlearn s wall / CPU | inference ratio v2 / v1 "
        "| load before |\n| --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for model in CLASSES:
        path = REPO / "benchmarks" / "results" / f"class-{model}-timing.json"
        if not path.is_file():
            continue
        for r in json.loads(path.read_text())["classes"]:
            v2, v1 = r["unlearn"], r["unlearn_v1"]
            lines.append(
                f"| {model} | {r['class']} | {v2['wall_s']:.2f} / {v2['cpu_s']:.2f} | "
                f"{v1['wall_s']:.2f} / {v1['cpu_s']:.2f} | {r['inference']['ratio']:.2f} / "
                f"{r['inference_v1']['ratio']:.2f} | {v2['loadavg_before'][0]:.1f} |"
            )
    if not lines:
        return "(not recorded yet: run the `--timing-only` commands above on a quiet machine)\n"
    return head + "\n".join(lines) + "\n"


NOTES = REPO / "benchmarks" / "class_notes.md"
SECTION = REPO / "benchmarks" / "results" / "class-unlearning.md"


def paper() -> str:
    """Fashion-MNIST class 5 against the journal's class-level numbers (DESIGN.md §3.8)."""
    lines = []
    for model in ("fashion-mnist-mlp", "fashion-mnist-cnn"):
        path = REPO / "benchmarks" / "results" / f"class-{model}.json"
        if not path.is_file():
            continue
        for r in json.loads(path.read_text())["classes"]:
            if r["class"] != 5:
                continue
            c7 = 100 * (r["other_test_accuracy_after"]["7"] - r["other_test_accuracy_before"]["7"])
            c7_train = (
                f"class 7 correct training samples {r['train_correct_before'][7]} -> "
                f"{r['train_correct_after'][7]}, "
                if "train_correct_before" in r
                else ""
            )
            lines.append(
                f"- **{model}, class 5**: correct test samples of class 5 "
                f"{r['class_test_correct_before']} -> {r['class_test_correct_after']} (paper: "
                f"944 -> 84); correct training samples {r['class_train_correct_before']} -> "
                f"{round(r['class_train_accuracy_after'] * r['class_train_correct_before'])} "
                f"(paper: 5777 -> 0); {c7_train}class 7 test accuracy change {c7:+.2f} points (paper: class "
                "7 training samples 5702 -> 4540, -20.4 %; suppression cannot lower any other "
                "class: an input predicted j != 5 keeps j)."
            )
    return "\n".join(lines) + "\n" if lines else "(no Fashion-MNIST class-5 result recorded)\n"


def section() -> Path:
    """benchmarks/results/class-unlearning.md: the notes with the table and the paper rows."""
    text = (
        NOTES.read_text()
        .replace("{table}", table().rstrip())
        .replace("{paper}", paper().rstrip())
        .replace("{timing}", timing_table().rstrip())
    )
    SECTION.write_text(text.rstrip() + "\n")
    _splice(REPO / "docs" / "BENCHMARKS.md", text.rstrip() + "\n")
    return SECTION


def _splice(doc: Path, text: str) -> None:
    """Replace an earlier copy of the section in place (up to the next heading), or put it
    where ``benchmarks.study`` includes it (before the performance rows)."""
    import re

    body = doc.read_text()
    anchor = "## Performance rows from the other benchmarks"
    first = text.splitlines()[0]
    if first in body:
        start = body.index(first)
        # up to the next heading (another issue's subsection may follow) or the anchor
        following = re.search(r"^#{2,3} ", body[start + len(first) :], flags=re.MULTILINE)
        end = start + len(first) + following.start() if following else body.index(anchor, start)
        doc.write_text(body[:start] + text + "\n" + body[end:])  # in place
        return
    at = body.index(anchor)
    doc.write_text(body[:at] + text + "\n" + body[at:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(CLASSES))
    parser.add_argument(
        "--classes", help="comma-separated classes, in this order (default: the model's three)"
    )
    parser.add_argument(
        "--retrain-only",
        type=int,
        metavar="SEED",
        help="only train (and cache) the retrained models of --classes with this seed, so that "
        "a second process can share the retraining of one class",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="folder for the JSON results of --model (default benchmarks/results; the table and "
        "the section always read benchmarks/results)",
    )
    parser.add_argument("--table", action="store_true", help="print the BENCHMARKS.md table")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="--timing-only: torch and onnxruntime threads (0: every core); default 1",
    )
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="only the unlearning time and inference ratios of --model (class-<model>-timing.json)",
    )
    parser.add_argument(
        "--section", action="store_true", help="write benchmarks/results/class-unlearning.md"
    )
    args = parser.parse_args()
    if args.results is not None:
        global RESULTS
        RESULTS = args.results
    if args.retrain_only is not None and args.model:
        dataset, _, arch = args.model.rpartition("-")
        orig = load_original(WORK, dataset, arch, 0)
        torch.set_num_threads(1)
        for k in (
            tuple(int(c) for c in args.classes.split(",")) if args.classes else CLASSES[args.model]
        ):
            _retrained(orig, dataset, arch, k, args.retrain_only)
    elif args.timing_only and args.model:
        print(f"wrote {timing(args.model, args.threads or None)}")
    elif args.section:
        print(f"wrote {section()}")
    elif args.table:
        print(table(), end="")
    elif args.model:
        order = tuple(int(c) for c in args.classes.split(",")) if args.classes else None
        print(f"wrote {run(args.model, order)}")
    else:
        parser.error("give --model or --table")


if __name__ == "__main__":
    main()
