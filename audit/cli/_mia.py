"""``audit mia``: membership inference against an ONNX model (members vs non-members), with
reference models the auditor trains itself on its reference data."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import click
import numpy as np

from audit.cli._cluster import cluster_options
from audit.cli._common import sandbox_options, show_progress
from audit.cli._verify import check_output, write_json
from audit.errors import InputError
from audit.mia import (
    ATTACKS,
    GameResult,
    LabelledData,
    LogitsFn,
    MiaConfig,
    membership_audit,
    resolve_architecture,
)
from audit.mia._lira import Variance, Variant
from audit.mia._recipe import OwnerRecipe, read_train_json
from audit.proof import Limits, read_bounded, read_npz
from audit.runtime import OnnxModel

__all__ = ["mia", "render_table"]


def _load(path: Path, what: str) -> LabelledData:
    limits = Limits()
    raw = read_bounded(path, limits.reference_bytes, what=what, owner=False)
    arrays = read_npz(
        raw,
        what=what,
        kinds={"x": "f", "y": "iu"},
        limits=limits,
        max_bytes=limits.reference_bytes,
        owner=False,
    )
    x, y = arrays["x"], arrays["y"].astype(np.int64)
    if x.ndim < 2 or len(x) == 0 or y.shape != (len(x),):
        raise InputError(f"{what}: need x [N, ...] and y [N] with N >= 1, got {x.shape}, {y.shape}")
    if not np.isfinite(x).all():
        raise InputError(f"{what}: x contains NaN or infinity")
    if (y < 0).any():
        raise InputError(f"{what}: labels must be non-negative")
    return LabelledData(np.ascontiguousarray(x, dtype=np.float32), y)


def _model_bytes(path: Path) -> bytes:
    return read_bounded(path, Limits().model_bytes, what=f"model {path}", owner=False)


def _models(model: Path, compare: tuple[str, ...], device: str) -> dict[str, tuple[Path, LogitsFn]]:
    out: dict[str, tuple[Path, LogitsFn]] = {
        "model": (model, OnnxModel.for_logits(_model_bytes(model), device=device).logits)
    }
    for item in compare:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise InputError(f"--compare takes LABEL=MODEL.onnx, got {item!r}")
        if label in out:
            raise InputError(f"--compare label {label!r} is used twice")
        out[label] = (
            Path(path),
            OnnxModel.for_logits(_model_bytes(Path(path)), device=device).logits,
        )
    return out


def _cell(est: Any) -> str:
    return f"{est.value:6.3f} [{est.low:.3f}, {est.high:.3f}]"


def render_table(result: GameResult) -> str:
    """A fixed-width table: one row per (model, attack)."""
    fprs = result.fprs
    head = ["model", "attack", "AUC [CI]", "|AUC-0.5|"]
    head += [f"TPR@{f:g} [CI]" for f in fprs] + [f"rev TPR@{fprs[0]:g}", "advantage"]
    rows = [head]
    for m in result.models:
        for a in m.attacks:
            mt = a.metrics
            rows.append(
                [m.label, a.attack, _cell(mt.auc), f"{mt.distinguishability.value:.3f}"]
                + [_cell(mt.tpr(f)) for f in fprs]
                + [f"{mt.tpr(fprs[0], reverse=True).value:.3f}", f"{mt.advantage.value:.3f}"]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    acc = "; ".join(
        f"{m.label}: accuracy {m.accuracy_members:.4f} members, {m.accuracy_non_members:.4f} "
        f"non-members"
        for m in result.models
    )
    ref = result.reference
    refs = (
        f"{ref['models']} reference models ({ref['architecture']}, {ref['epochs']} epochs, "
        f"{'online' if ref['online'] else 'offline'}, seed {ref['seed']})"
        if ref
        else "no reference models"
    )
    return "\n".join(
        [*lines, f"{result.members} members vs {result.non_members} non-members; {refs}", acc]
    )


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    write_json(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _rmia_a(value: str) -> float | Literal["auto"]:
    if value == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError as exc:
        raise click.BadParameter("use 'auto' or a number in [0, 1]") from exc


_FILE = click.Path(path_type=Path, exists=True, dir_okay=False)


@click.command()
@click.argument("model", type=_FILE)
@click.option("--members", type=_FILE, required=True, help="Training members: .npz with x, y.")
@click.option("--non-members", type=_FILE, required=True, help="Held-out non-members (.npz).")
@click.option(
    "--reference",
    type=_FILE,
    required=True,
    help="The auditor's reference data (.npz), disjoint from both sets; reference models train on halves of it.",
)
@click.option(
    "--attack",
    "attacks",
    type=click.Choice(list(ATTACKS)),
    multiple=True,
    help="Repeat to choose several; default: all.",
)
@click.option("--shadow-models", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--lira-variant", type=click.Choice(["offline", "online"]), default="offline", show_default=True
)
@click.option(
    "--variance", type=click.Choice(["fixed", "per-example"]), default="fixed", show_default=True
)
@click.option("--rmia-a", default="auto", show_default=True, help="RMIA offline a, or auto.")
@click.option("--rmia-gamma", type=float, default=1.0, show_default=True)
@click.option(
    "--arch",
    default=None,
    help="Reference-model architecture: mlp[:W1,W2,...] or cnn[:W]. Default: read an MLP from MODEL.",
)
@click.option(
    "--train-json",
    type=_FILE,
    default=None,
    help="The owner's train.json: reference models copy its recipe (epochs, batch size, lr, "
    "weight decay); every field below overrides it.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Default: train.json, else 30."
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Default: train.json, else 128."
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Default: train.json, else 1e-3.",
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=None,
    help="Default: train.json, else 0.",
)
@click.option(
    "--train-size",
    type=click.IntRange(min=1),
    default=None,
    help="Samples per reference model (the target's training-set size). Default: train.json's "
    "train_size, else half the reference data.",
)
@click.option(
    "--model-bootstrap",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Bootstrap draws over the reference models; intervals include their variance.",
)
@click.option("--per-class", is_flag=True, help="Per-class thresholds for loss/confidence/entropy.")
@click.option("--sample-scores", is_flag=True, help="Keep every sample's score in the JSON.")
@click.option(
    "--compare",
    multiple=True,
    help="LABEL=MODEL.onnx: score another model in the same game with the same reference models.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@cluster_options
@click.option("--bootstrap", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@sandbox_options
def mia(
    model: Path,
    members: Path,
    non_members: Path,
    reference: Path,
    attacks: tuple[str, ...],
    shadow_models: int,
    lira_variant: str,
    variance: str,
    rmia_a: str,
    rmia_gamma: float,
    arch: str | None,
    train_json: Path | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    weight_decay: float | None,
    train_size: int | None,
    model_bootstrap: int,
    per_class: bool,
    sample_scores: bool,
    compare: tuple[str, ...],
    seed: int,
    backend: str,
    address: str | None,
    jobs: int,
    bootstrap: int,
    device: str,
    json_out: Path | None,
    quiet: bool,
) -> None:
    """Membership inference on MODEL: members vs non-members, every chosen attack, with
    bootstrap confidence intervals (AUC, TPR at 1% and 0.1% FPR, two-sided)."""
    check_output(
        json_out,
        inputs=[
            model,
            members,
            non_members,
            reference,
            *(Path(c.partition("=")[2]) for c in compare),
        ],
    )
    data = {
        name: _load(path, name)
        for name, path in (
            ("members", members),
            ("non-members", non_members),
            ("reference", reference),
        )
    }
    targets = _models(model, compare, device)
    probe = np.asarray(targets["model"][1](data["reference"].x[:1]))
    classes = int(probe.shape[-1]) if probe.ndim == 2 else 0
    for name, labelled in data.items():
        if classes and int(labelled.y.max()) >= classes:
            raise InputError(
                f"{name}: label {int(labelled.y.max())} is not a class of the model (0..{classes - 1})"
            )
    architecture = resolve_architecture(
        onnx_model=model,
        declared=arch,
        input_shape=tuple(data["reference"].x.shape[1:]),
        classes=int(probe.shape[-1]),
    )
    owner = read_train_json(train_json) if train_json is not None else OwnerRecipe({}, None, None)
    config = MiaConfig(
        attacks=attacks or tuple(ATTACKS),
        reference_models=shadow_models,
        recipe=owner.recipe(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay),
        train_size=train_size if train_size is not None else owner.train_size,
        model_bootstrap=min(model_bootstrap, bootstrap),
        per_class=per_class,
        sample_scores=sample_scores,
        lira_variant=cast(Variant, lira_variant),  # click.Choice checked both
        lira_variance=cast(Variance, variance),
        rmia_offline_a=_rmia_a(rmia_a),
        rmia_gamma=rmia_gamma,
        seed=seed,
        bootstrap=bootstrap,
        jobs=jobs,
        backend=backend,
        address=address,
        device=device,
    )
    result = membership_audit(
        {label: fn for label, (_, fn) in targets.items()},
        data["members"],
        data["non-members"],
        data["reference"],
        architecture=architecture,
        config=config,
        progress=show_progress(quiet),
        now=datetime.now(UTC),
    )
    if json_out is not None:
        doc = result.to_json()
        doc["inputs"] = {
            "models": {label: str(path) for label, (path, _) in targets.items()},
            "members": str(members),
            "non_members": str(non_members),
            "reference": str(reference),
        }
        _write_json(json_out, doc)
    click.echo(render_table(result))
