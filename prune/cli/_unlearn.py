"""``prune unlearn``: patch a model so that it forgets training samples; write the proof folder.

Everything goes into ``PROOF.partial/`` first and is renamed to ``PROOF`` only when complete, so
a failed or interrupted run leaves no half-written proof. With ``--key`` the owner's key is opened
*before* the (possibly long) patch run, and a run that could not change and certify every forget
sample is refused rather than signed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click
import numpy as np

from prune.cli._common import show_progress
from prune.data import load_npz
from prune.errors import DataError, PruneError
from prune.gates import AUTO, GATES, ROUTED_FROM
from prune.privacy import add_decoys
from prune.solvers import SOLVERS
from prune.targets import TARGET_POLICIES
from prune.unlearn import DEFAULT_MARGIN, DEFAULT_N, STRATEGIES, UnlearnResult, unlearn

__all__ = ["read_forget_indices", "unlearn_command"]


def read_forget_indices(path: Path) -> list[int]:
    """One integer per line (blank lines ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read forget-index file {path}: {exc}") from exc
    out: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(int(line.strip()))
        except ValueError:
            raise DataError(f"{path}:{number}: not an integer: {line.strip()[:40]!r}") from None
    if not out:
        raise DataError(f"{path} lists no forget indices (the forget set is empty)")
    return out


def _open_key(key_path: Path) -> bytes | None:
    """Open the signing key now (fail fast); return the passphrase that opened it."""
    try:
        from prune.proofs import open_private_key
    except ImportError as exc:
        raise PruneError("signing is not available in this build") from exc
    return open_private_key(key_path).passphrase


def _sign(
    folder: Path, result: UnlearnResult, original: bytes, key_path: Path, passphrase: bytes | None
) -> None:
    try:
        from prune.proofs import write_signed_proof
    except ImportError as exc:
        raise PruneError("signing is not available in this build") from exc
    write_signed_proof(
        folder, result=result, original_model=original, key_path=key_path, passphrase=passphrase
    )


def _write(out: Path, result: UnlearnResult, sign: Any) -> None:
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        raise PruneError(f"{partial} exists (left by an interrupted run?); remove it first")
    partial.mkdir(parents=True)
    try:
        (partial / "model.onnx").write_bytes(result.patched_model)
        doc = {**result.summary, "method": result.method}
        (partial / "summary.json").write_text(
            json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"
        )
        sign(partial)
        if out.exists():
            out.rmdir()
        partial.replace(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


@click.command("unlearn")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--train",
    "train_path",
    type=click.Path(path_type=Path),
    required=True,
    help="WORK/train.npz (x float32, y int64).",
)
@click.option(
    "--forget-indices",
    type=click.Path(path_type=Path),
    help="File of training-row indices, one per line.",
)
@click.option("--forget-class", type=int, help="Forget every training sample of this class.")
@click.option(
    "--test",
    "test_path",
    type=click.Path(path_type=Path),
    help="WORK/test.npz for test accuracies.",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    help="KEYS/owner.key: sign the proof (passphrase from $PRUNE_KEY_PASSPHRASE or a prompt).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Proof folder PROOF (must not exist or be empty).",
)
@click.option("--solver", type=click.Choice(list(SOLVERS)), default="lagrangian", show_default=True)
@click.option(
    "--gate",
    type=click.Choice([*GATES, AUTO]),
    default=AUTO,
    show_default=True,
    help=f"Support gate; auto: routed from {ROUTED_FROM} patches on, activation below.",
)
@click.option(
    "--target-policy",
    type=click.Choice(list(TARGET_POLICIES)),
    default="runner-up",
    show_default=True,
)
@click.option(
    "--strategy", type=click.Choice(list(STRATEGIES)), default="individual", show_default=True
)
@click.option(
    "--margin",
    type=float,
    default=DEFAULT_MARGIN,
    show_default=True,
    help="Certified logit margin of every claim.",
)
@click.option(
    "--n",
    "n",
    type=float,
    default=DEFAULT_N,
    show_default=True,
    help="Support sharpness (band 1/n).",
)
@click.option(
    "--cut",
    type=str,
    default=None,
    help="Tensor to patch after (default: the input if the model is piecewise linear, else 'features').",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seeds target choice and clustering."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Cap torch threads while solving (default: torch's own setting).",
)
@click.option(
    "--decoys",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also forget K random training records per requested one, drawn from OS entropy, so "
    "that being deleted no longer shows having asked (requester privacy; see prune.privacy).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def unlearn_command(
    model: Path,
    train_path: Path,
    forget_indices: Path | None,
    forget_class: int | None,
    test_path: Path | None,
    key_path: Path | None,
    out: Path,
    solver: str,
    gate: str,
    target_policy: str,
    strategy: str,
    margin: float,
    n: float,
    cut: str | None,
    seed: int,
    threads: int | None,
    decoys: int,
    quiet: bool,
) -> None:
    """Patch MODEL so that it forgets training samples; write PROOF/model.onnx and summary.json
    (and, with --key, the signed certificate, model signature, openings and receipts)."""
    if (forget_indices is None) == (forget_class is None):
        raise DataError("give exactly one of --forget-indices FILE and --forget-class K")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PruneError(f"output folder {out} exists and is not empty")
    try:
        raw = model.read_bytes()
    except OSError as exc:
        raise PruneError(f"cannot read model {model}: {exc.strerror or exc}") from exc
    x_train, y_train = load_npz(train_path)
    x_test, y_test = load_npz(test_path) if test_path is not None else (None, None)
    indices = read_forget_indices(forget_indices) if forget_indices is not None else None
    if decoys and indices is None:
        raise DataError("--decoys needs --forget-indices (a class deletion has no requesters)")
    if decoys and indices is not None:
        rng = np.random.default_rng()  # OS entropy: outsiders must not reproduce the decoys
        plan = add_decoys(indices, n_train=len(y_train), per_request=decoys, rng=rng)
        indices = plan.forget_indices.tolist()
    passphrase = _open_key(key_path) if key_path is not None else None
    result = unlearn(
        raw,
        x_train,
        y_train,
        forget_indices=indices,
        forget_class=forget_class,
        x_test=x_test,
        y_test=y_test,
        solver=solver,
        gate=gate,
        target_policy=target_policy,
        strategy=strategy,
        margin=margin,
        n=n,
        cut=cut,
        seed=seed,
        progress=show_progress(quiet),
        threads=threads,
    )
    if key_path is not None and not result.complete:
        raise PruneError(
            f"{len(result.failed)} of {len(result.forget_y)} forget samples could not be changed "
            f"and certified (first leaf {result.failed[0]}); refusing to sign an incomplete proof "
            "(try a larger --margin, another --solver or --n)"
        )

    def sign(folder: Path) -> None:
        if key_path is not None:
            _sign(folder, result, raw, key_path, passphrase)

    _write(out, result, sign)
    s = result.summary
    test_part = (
        f", test accuracy {s['test_accuracy_before']:.4f} -> {s['test_accuracy_after']:.4f}"
        if "test_accuracy_before" in s
        else ""
    )
    click.echo(
        f"forgot {len(result.forget_y)} samples: forget accuracy {s['forget_accuracy_before']:.4f} -> "
        f"{s['forget_accuracy_after']:.4f}{test_part}; {s['patches']} patches, {s['certified']} "
        f"certified claims, {s['seconds']:.1f} s -> {out}"
    )
    if result.failed:
        click.echo(
            f"prune: warning: {len(result.failed)} forget samples could not be changed and "
            f"certified (leaf indices in {out}/summary.json)",
            err=True,
        )
