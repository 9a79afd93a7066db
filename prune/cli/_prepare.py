"""``prune prepare``: cross-fitted reference models for ``--target-policy calibrated``, trained
once per model and reused by every deletion request (:mod:`prune.calibrate`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from prune.calibrate import DEFAULT_FOLDS
from prune.data import load_npz
from prune.errors import DataError, PruneError

__all__ = ["prepare_command"]


@click.command("prepare")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--train", "train_path", type=click.Path(path_type=Path), required=True, help="WORK/train.npz."
)
@click.option(
    "--test",
    "test_path",
    type=click.Path(path_type=Path),
    default=None,
    help="WORK/test.npz: held-out data for the logit-scale calibration (recommended).",
)
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The model's training recipe (default: train.json next to MODEL, as prune train writes it).",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=DEFAULT_FOLDS,
    show_default=True,
    help="Cross-fitted reference models (each trained without one fold of the rows).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the fold assignment.")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for manifest.json and logits.npz (must not exist or be empty).",
)
@click.option(
    "--cut",
    type=str,
    default=None,
    help="The --cut the requests will give `prune unlearn` (only matters before a MaxPool: it "
    "reads the model with the pooling in the head, the original they commit to).",
)
@click.option("--threads", type=click.IntRange(min=1), default=None)
def prepare_command(
    model: Path,
    train_path: Path,
    test_path: Path | None,
    recipe_path: Path | None,
    folds: int,
    seed: int,
    out: Path,
    cut: str | None,
    threads: int | None,
) -> None:
    """Train FOLDS reference models with MODEL's own recipe, each without one fold of the
    training data, and store every training row's out-logits in OUT (a one-time cost)."""
    from prune.calibrate import prepare, recipe_from_train_json, save_prepared
    from prune.model import read_model

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PruneError(f"output folder {out} exists and is not empty")
    raw, _ = read_model(model, cut=cut)  # the same normalised bytes `prune unlearn` commits to
    recipe_file = recipe_path or model.with_name("train.json")
    try:
        doc = json.loads(recipe_file.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the training recipe {recipe_file}: {exc}") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{recipe_file} is not a training recipe")
    recipe = recipe_from_train_json(doc)
    x_train, y_train = load_npz(train_path, input_shape=recipe.input_shape)
    x_test = load_npz(test_path, input_shape=recipe.input_shape)[0] if test_path else None
    prepared = prepare(
        raw,
        x_train,
        y_train,
        recipe=recipe,
        folds=folds,
        x_heldout=x_test,
        seed=seed,
        threads=threads,
    )
    save_prepared(prepared, out)
    click.echo(
        f"prepared {folds} cross-fitted reference models in {prepared.seconds:.1f} s -> {out}"
    )
