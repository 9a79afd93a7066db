"""``prune train``: a seeded reference model exported to ONNX, with its saved split."""

from __future__ import annotations

from pathlib import Path

import click

from prune.cli._common import SEED, check_output_folder, show_progress
from prune.data import load_dataset
from prune.train import DEFAULT_EPOCHS, DEFAULT_HIDDEN, TrainConfig, train_to_folder

__all__ = ["train"]


_MAX_WIDTH = 1 << 16


def _widths(text: str) -> tuple[int, ...]:
    """Comma-separated layer widths, ASCII digits only, each in 1..65536."""
    parts = text.split(",")
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise click.BadParameter("--hidden must be comma-separated positive integers")
    widths = tuple(int(p) for p in parts)
    if not all(1 <= w <= _MAX_WIDTH for w in widths):
        raise click.BadParameter(f"--hidden widths must be in 1..{_MAX_WIDTH}")
    return widths


@click.command()
@click.option(
    "--dataset",
    type=click.Choice(["digits", "fashion-mnist"]),
    default="digits",
    show_default=True,
    help="digits ships with scikit-learn; fashion-mnist reads the Debian dataset-fashion-mnist folder.",
)
@click.option("--arch", type=click.Choice(["mlp", "cnn"]), default="mlp", show_default=True)
@click.option(
    "--out", "out", type=click.Path(path_type=Path), required=True, help="Output folder WORK."
)
@click.option(
    "--seed", type=SEED, default=0, show_default=True, help="Seeds the split, init and data order."
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Default: 60 digits, 12 Fashion-MNIST.",
)
@click.option(
    "--hidden",
    type=str,
    default=None,
    help="Hidden widths, comma-separated (MLP: all layers; CNN: the head). Default: 64,64 digits; 256,256 Fashion-MNIST.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder of IDX files for fashion-mnist (default /usr/share/datasets/fashion-mnist).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    dataset: str,
    arch: str,
    out: Path,
    seed: int,
    epochs: int | None,
    hidden: str | None,
    data_dir: Path | None,
    quiet: bool,
) -> None:
    """Train a ReLU MLP or small CNN and write WORK/model.onnx, train.npz, test.npz, train.json."""
    check_output_folder(out, inputs=[data_dir])
    widths = _widths(hidden) if hidden else DEFAULT_HIDDEN[dataset]
    if arch == "cnn" and not hidden:
        widths = (64,) if dataset == "digits" else (128,)
    data = load_dataset(dataset, seed=seed, data_dir=data_dir)  # type: ignore[arg-type]
    config = TrainConfig(
        arch=arch,  # type: ignore[arg-type]
        hidden=widths,
        epochs=epochs or DEFAULT_EPOCHS[dataset],
        seed=seed,
    )
    result = train_to_folder(data, config, out, progress=show_progress(quiet))
    click.echo(
        f"trained {arch} on {dataset}: train accuracy {result.train_accuracy:.4f}, "
        f"test accuracy {result.test_accuracy:.4f} ({result.seconds:.1f} s) -> {out}"
    )
