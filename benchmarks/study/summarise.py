"""Recorded cells -> ``results.csv``, ``docs/BENCHMARKS.md`` and its SVG plots.

Everything in the document is computed from the recorded cell files, except the hand-written
reading notes (``benchmarks/study/notes.md``), which are included verbatim. Regenerating from the
same results gives the same files.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.study.evaluate import INFERENCE_METHOD
from benchmarks.study.paper import paper_comparison
from benchmarks.study.perf import PerfRow, perf_rows
from benchmarks.study.plan import BASELINES, PRUNE_VARIANTS, cells_for
from benchmarks.study.runner import REPO
from benchmarks.study.svg import Point, grouped_bars, scatter
from benchmarks.study.tables import COLUMNS, Group, flat_row, group_rows, load_cells
from prune.baselines import UNLEARNING_METHODS

__all__ = ["summarise"]

ORDER = [v.label for v in BASELINES + PRUNE_VARIANTS]
NOTES = Path(__file__).with_name("notes.md")
CLASS_SECTION = Path(__file__).parents[1] / "results" / "class-unlearning.md"
CALIBRATED_SECTION = REPO / "benchmarks" / "results" / "calibrated" / "section.md"
"""Issue 13's section (calibrated targets), written with benchmarks/calibrated_report.py."""
BYOM_SECTION = REPO / "benchmarks" / "results" / "byom-section.md"
"""Issue 15's section (ResNet-20, narrow heads after a MaxPool): the figures of
benchmarks/results/resnet20.json and pool-cut.json with the commands that wrote them."""


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def _secs(v: float | None) -> str:
    if v is None:
        return "–"
    if v < 0.01:
        return f"{v:.2g}"
    return f"{v:.3f}" if v < 1 else f"{v:.1f}"


def _ratio(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _write_csv(path: Path, docs: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        rows = sorted(
            (flat_row(d) for d in docs), key=lambda r: tuple(str(r[c]) for c in COLUMNS[:5])
        )
        writer.writerows(rows)
    tmp.replace(path)


def _table(groups: Sequence[Group]) -> list[str]:
    retrain = next((g for g in groups if g.method == "retrain" and g.ok), None)
    # Without a retrain row, the retrained reference's training time (same recipe, measured in its
    # own process) stands in.
    retrain_s = (
        retrain.mean("seconds")
        if retrain
        else next((m for g in groups if (m := g.mean("reference_retrain_seconds"))), None)
    )
    lines = [
        "| method | forget acc % (before → after) | retain acc % | test acc % (Δ pts) | KL fgt | KL test "
        "| RMIA AUC [95% CI] | RMIA TPR@1% | LiRA AUC | time s | × faster than retrain | prepare s "
        "| peak RSS MB (Δ) | size × | inference × |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        if not g.ok:
            lines.append(f"| {g.method} | failed: {g.error} |" + " |" * 13)
            continue
        seeds = f" (n={len(g.ok)})" if len(g.ok) > 1 else ""
        t_before, t_after = g.mean("test_acc_before"), g.mean("test_acc_after")
        delta = None if t_before is None or t_after is None else 100 * (t_after - t_before)
        auc, lo, hi = g.mean("rmia_auc"), g.mean("rmia_auc_low"), g.mean("rmia_auc_high")
        mia = "not run" if auc is None else f"{auc:.3f} [{_num(lo)}, {_num(hi)}]"
        secs = g.mean("seconds")
        speed = (
            "–" if not retrain_s or not secs or g.method == "original" else _ratio(retrain_s / secs)
        )
        rss_b, rss_a = g.mean("peak_rss_before_mb"), g.mean("peak_rss_after_mb")
        rss = "–" if rss_a is None or rss_b is None else f"{rss_a:.0f} (+{rss_a - rss_b:.0f})"
        lines.append(
            f"| {g.method}{seeds} | {_pct(g.mean('forget_acc_before'))} → {_pct(g.mean('forget_acc_after'))} "
            f"| {_pct(g.mean('retain_acc_after'))} | {_pct(t_after)} ({'–' if delta is None else f'{delta:+.1f}'}) "
            f"| {_num(g.mean('kl_forget'))} | {_num(g.mean('kl_test'))} | {mia} | {_pct(g.mean('rmia_tpr_1pct'))} "
            f"| {_num(g.mean('lira_auc'))} | {_secs(secs)} | {speed} | {_secs(g.mean('prepare_seconds'))} "
            f"| {rss} | {_num(g.mean('size_ratio'))} | {_num(g.mean('inference_ratio'))} |"
        )
    return lines


def _plots(dataset: str, arch: str, groups: Sequence[Group], img: Path) -> list[str]:
    stem = f"study-{dataset}-{arch}"
    settings = list(dict.fromkeys(g.setting for g in groups))
    methods = [m for m in ORDER if any(g.method == m for g in groups)]
    points = [
        Point(
            100 * ((g.mean("forget_acc_before") or 0) - (g.mean("forget_acc_after") or 0)),
            100 * ((g.mean("test_acc_after") or 0) - (g.mean("test_acc_before") or 0)),
            g.method,
        )
        for g in groups
        if g.ok and g.method != "original"
    ]
    cell = {(g.setting, g.method): g for g in groups}

    def series(column: str) -> dict[str, list[float | None]]:
        return {
            m: [cell[(s, m)].mean(column) if (s, m) in cell else None for s in settings]
            for m in methods
            if m != "original" or column != "seconds"
        }

    files = {
        "tradeoff": scatter(
            points,
            title=f"{dataset} {arch}: forgetting vs utility (every setting)",
            x_label="forget accuracy drop (points)",
            y_label="test accuracy change (points)",
            series_order=methods,
        ),
        "time": grouped_bars(
            settings,
            series("seconds"),
            title=f"{dataset} {arch}: unlearning time (log scale)",
            y_label="seconds",
            log=True,
        ),
        "mia": grouped_bars(
            settings,
            series("rmia_auc"),
            title=f"{dataset} {arch}: RMIA AUC, forget set vs non-members (0.5 = chance)",
            y_label="AUC",
            reference_line=0.5,
        ),
    }
    out = []
    img.mkdir(parents=True, exist_ok=True)
    for kind, text in files.items():
        (img / f"{stem}-{kind}.svg").write_text(text)
        out.append(f"![{dataset} {arch} {kind}](img/{stem}-{kind}.svg)")
    return out


def _study_perf(groups: Sequence[Group]) -> list[PerfRow]:
    """Patch time and inference overhead of PRUNE (engine defaults), as measured by the study."""
    rows = []
    for g in groups:
        if g.method != "prune" or not g.ok:
            continue
        size = g.ok[0]["forget_size"]
        where = f"{g.dataset}/{g.arch}/{g.setting}"
        command = f"python -m benchmarks.study run --config default --only '{where}/prune/*'"
        load = g.mean("loadavg_1m")
        rows.append(
            PerfRow(
                kind="patch time",
                source="study",
                what=f"prune unlearn, {where} ({size} points)",
                seconds=g.mean("seconds"),
                details=f"patches={g.fact('patches')}, certified={g.fact('certified')}, load {load:.1f}"
                if load is not None
                else "",
                command=command,
            )
        )
        ratio = g.mean("inference_ratio")
        if ratio is not None:
            rows.append(
                PerfRow(
                    kind="inference overhead",
                    source="study",
                    what=f"patched vs original, {where} ({g.fact('patches')} patches)",
                    seconds=_inference_seconds(g),
                    details=f"{ratio:.2f}× the original's CPU time on the test set",
                    command=command,
                )
            )
    return rows


def _inference_seconds(g: Group) -> float | None:
    for doc in g.docs:
        inference = doc.get("inference")
        if isinstance(inference, dict) and inference.get("method") == INFERENCE_METHOD:
            return float(inference["deployed_s"])
    return None


def _hyperparameters() -> list[str]:
    lines = ["| method | hyperparameters (defaults used in the study) |", "|---|---|"]
    for name, cls in UNLEARNING_METHODS.items():
        fields = [
            f"{f.name}={f.default}"
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name not in ("recipe", "log_dir") and f.default is not dataclasses.MISSING
        ]
        lines.append(f"| {name} | {', '.join(fields) or '(the training recipe)'} |")
    for v in PRUNE_VARIANTS:
        params = ", ".join(f"{k}={val}" for k, val in v.params) or "the engine's defaults"
        lines.append(f"| {v.label} | {params} |")
    return lines


def _coverage(docs: Sequence[dict[str, Any]]) -> list[str]:
    recorded = {d["key"]: d["status"] for d in docs}
    lines = ["| config | cells | recorded ok | failed | not run |", "|---|---|---|---|---|"]
    for config in ("quick", "default", "full"):
        keys = [c.key() for c in cells_for(config)]
        ok = sum(recorded.get(k) == "ok" for k in keys)
        failed = sum(k in recorded and recorded[k] != "ok" for k in keys)
        lines.append(f"| {config} | {len(keys)} | {ok} | {failed} | {len(keys) - ok - failed} |")
    return lines


def _machine(docs: Sequence[dict[str, Any]]) -> str:
    ok = [d for d in docs if d["status"] == "ok"]
    if not ok:
        return "No cell recorded yet."
    loads = [float(d["machine"]["loadavg_1m"]) for d in ok]
    m = ok[0]["machine"]
    threads = sorted({int(d.get("threads", 0)) for d in ok})
    return (
        f"{m['cpus']} CPU cores, {m['platform']}; Python {m['python']}, torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}; {', '.join(map(str, threads))} thread(s) per cell. "
        f"The machine was shared with other work while the study ran: the 1-minute load average at "
        f"cell start ranged {min(loads):.1f}–{max(loads):.1f} (median {sorted(loads)[len(loads) // 2]:.1f}), "
        "so absolute times are inflated and noisy; ratios between methods in the same setting are "
        "more trustworthy than absolute seconds."
    )


def summarise(*, results: Path, docs: Path) -> list[Path]:
    """Write the CSV, the plots and ``BENCHMARKS.md``; return the paths written."""
    cells = load_cells(results)
    csv_path = results / "results.csv"
    _write_csv(csv_path, cells)
    groups = group_rows(cells, ORDER)
    md: list[str] = [
        "# Benchmarks: PRUNE next to the unlearning baselines",
        "",
        "Generated by `python -m benchmarks.study summarise` from the cell results in "
        "`benchmarks/results/study/cells/` (CSV: `benchmarks/results/study/results.csv`). "
        "Do not edit by hand; the reading notes come from `benchmarks/study/notes.md`.",
        "",
        "## Reproduce",
        "",
        "```",
        "python -m benchmarks.study run --config quick      # digits only, a few minutes",
        "python -m benchmarks.study run --config default    # the recorded study",
        "python -m benchmarks.study status --config default # what is recorded, failed, missing",
        "python -m benchmarks.study summarise               # this document",
        "```",
        "",
        "Runs are seeded and resumable: each cell's result is a JSON file named by a hash of its "
        "configuration and is skipped when present (`--retry-failed` reruns failures). Each cell "
        "runs in its own process. Cached models (originals, retrained references, SISA shards, "
        "Amnesiac update logs, MIA reference models) live in `benchmarks/runs/study/` (not "
        "committed).",
        "",
        "## What ran",
        "",
        *_coverage(cells),
        "",
        _machine(cells),
        "",
        "## Methods",
        "",
        *_hyperparameters(),
        "",
        "Every method starts from the model `prune train` produces (same recipe, same seed), "
        "except SISA, which serves its own 5-shard ensemble (its *before* numbers are the "
        "ensemble's). `original` is no unlearning at all. `retrain` retrains on the retained data "
        "with a fresh seed; the *reference* retrained model for the KL columns uses the original's "
        "seed, so the `retrain` row's KL is the seed-to-seed noise floor.",
        "",
        "## Metrics",
        "",
        "- **Accuracies** on the forget set, the retained training data and the test set, before → "
        "after, in %; Δ test in percentage points.",
        "- **KL fgt / KL test**: mean KL(p_retrained ‖ p_method) of softmax outputs in nats, on the "
        "forget set and the test set.",
        "- **RMIA / LiRA**: the auditor's attacks (`audit.mia`, offline, 4 reference models trained "
        "on half of the test split), forget set (members) vs held-out non-members from the other "
        "half (class settings: non-members of the same class). AUC with a bootstrap 95% interval; "
        "TPR at 1% FPR. 0.5 is chance; a retrained model is the target.",
        "- **time**: the unlearning call only. **prepare**: training-time work the method needs "
        "before any request (SISA: training the shards; Amnesiac: training with the update log). "
        "**× faster than retrain**: the `retrain` row's time / this row's time (where there is "
        "no retrain row, the retrained reference's training time).",
        "- **peak RSS**: the cell process's peak resident memory right after unlearning; in "
        "brackets the growth during unlearning (the floor is Python + torch + data + model).",
        "- **size ×**: deployed ONNX bytes / original ONNX bytes. **inference ×**: onnxruntime "
        "CPU time of the deployed model on the whole test set / the original's (1 thread; best "
        "of 7 alternating timings of back-to-back calls; CPU rather than wall time because the "
        "shared machine's preemption swamped sub-millisecond wall-clock timings).",
        "",
        "## Results",
        "",
    ]
    by_model: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        by_model.setdefault((g.dataset, g.arch), []).append(g)
    for (dataset, arch), gs in by_model.items():
        md += [f"### {dataset}, {arch}", ""]
        md += _plots(dataset, arch, gs, docs / "img")
        md.append("")
        for setting in dict.fromkeys(g.setting for g in gs):
            sub = [g for g in gs if g.setting == setting]
            size = next((r["forget_size"] for g in sub for r in g.ok), None)
            md += [f"#### {setting}" + (f" ({size} points forgotten)" if size else ""), ""]
            md += _table(sub)
            md.append("")
    md += ["## Comparison with the paper", "", *paper_comparison(groups), ""]
    if NOTES.is_file():
        md += [NOTES.read_text().rstrip(), ""]
    if CLASS_SECTION.is_file():  # written by benchmarks/bench_class.py --section
        md += [CLASS_SECTION.read_text().rstrip(), ""]
    if CALIBRATED_SECTION.is_file():
        md += [CALIBRATED_SECTION.read_text().rstrip(), ""]
    md += [
        "## Performance rows from the other benchmarks",
        "",
        "| kind | what | median s | details | source | reproduce |",
        "|---|---|---|---|---|---|",
    ]
    rows = perf_rows(REPO / "benchmarks" / "results", REPO, extra=_study_perf(groups))
    for r in rows:
        if r.kind != "other":
            md.append(
                f"| {r.kind} | {r.what} | {_secs(r.seconds)} | {r.details} | {r.source} | `{r.command}` |"
            )
    others = sorted({r.source for r in rows if r.kind == "other"})
    if others:
        md += [
            "",
            f"Other recorded benchmark files (not one of the kinds above): {', '.join(others)}.",
        ]
    if BYOM_SECTION.is_file():
        md += ["", BYOM_SECTION.read_text().rstrip()]
    md.append("")
    out = docs / "BENCHMARKS.md"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(md))
    tmp.replace(out)
    return [csv_path, out, *sorted((docs / "img").glob("study-*.svg"))]
