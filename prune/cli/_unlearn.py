"""``prune unlearn``: patch a model so that it forgets training samples; write the proof folder.

Everything goes into ``PROOF.partial/`` first and is renamed to ``PROOF`` only when complete, so
a failed or interrupted run leaves no half-written proof. With ``--key`` the owner's key is opened
*before* the (possibly long) patch run, and a run that could not change and certify every forget
sample is refused rather than signed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from prune.calibrate import CALIBRATIONS, DEFAULT_TOLERANCE
from prune.cli._common import SEED, check_output_folder, finite_range, show_progress
from prune.data import load_npz
from prune.errors import DataError, PruneError
from prune.formats import UnreadableFile, read_regular
from prune.gates import AUTO, GATES, ROUTED_FROM
from prune.model import read_model
from prune.privacy import add_decoys
from prune.regions import InputBox
from prune.solvers import MAX_STEPS, SOLVERS, make_solver
from prune.targets import POLICY_NAMES
from prune.unlearn import (
    CLASS_MODES,
    DEFAULT_CLASS_MARGIN,
    DEFAULT_MARGIN,
    DEFAULT_N,
    DEFAULT_PROXY_BUDGET,
    STRATEGIES,
    UnlearnResult,
    unlearn,
)

ORIGINAL_EMBEDDED = "original.onnx"
"""Written to PROOF/ when the model file was normalised on import (external data embedded, a fixed
batch freed): its digest is the committed original's."""

__all__ = ["read_forget_indices", "unlearn_command"]


_MAX_INDEX_FILE = 256 << 20
_MAX_MODEL = 2 << 30


def read_forget_indices(path: Path) -> list[int]:
    """One non-negative integer per line, ASCII digits only (blank lines ignored): ``1_7``,
    ``+3`` or fullwidth digits, which Python's ``int`` would accept, are refused."""
    try:
        text = read_regular(path, _MAX_INDEX_FILE).decode("ascii")
    except UnreadableFile as exc:
        raise DataError(f"forget-index file: {exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"forget-index file {path} is not ASCII text") from None
    out: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.strip()
        if not item:
            continue
        if not item.isdigit() or len(item) > 18:
            raise DataError(f"{path}:{number}: not an integer: {item[:40]!r} (ASCII digits only)")
        out.append(int(item))
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
    """Write the proof into a private temporary sibling and rename it into place: a failed or
    concurrent run leaves no half-written proof and no temporary folder."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial.", dir=out.parent))
    except OSError as exc:
        raise PruneError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        (partial / "model.onnx").write_bytes(result.patched_model)
        doc = {**result.summary, "method": result.method}
        (partial / "summary.json").write_text(
            json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"
        )
        sign(partial)
        os.chmod(partial, 0o755)
        if out.is_dir() and not out.is_symlink():
            out.rmdir()  # empty (checked first); filled meanwhile by another run: refused
        os.rename(partial, out)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise PruneError(
            f"cannot write the proof to {out}: {exc.strerror or exc} (another run writing it?)"
        ) from None
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
@click.option(
    "--forget-class", type=click.IntRange(min=0), help="Forget this whole class (see --class-mode)."
)
@click.option(
    "--class-mode",
    type=click.Choice(list(CLASS_MODES)),
    default="suppress",
    show_default=True,
    help="suppress: the class is never predicted on the whole input box (certified); regions: "
    "patch only the linear regions of the class's training samples (the class stays predictable "
    "elsewhere).",
)
@click.option(
    "--class-margin",
    type=click.FloatRange(min=0.0, min_open=True, max=1e6),
    default=DEFAULT_CLASS_MARGIN,
    show_default=True,
    help="suppress mode: logit gap between the class and the best other class.",
)
@click.option(
    "--class-remap/--no-class-remap",
    default=True,
    show_default=True,
    help="suppress mode: give the inputs the original assigned to the class the distribution of "
    "a proxy retrained without it (form v2); without: the original's other logits (form v1).",
)
@click.option(
    "--proxy-budget",
    type=click.IntRange(min=1),
    default=DEFAULT_PROXY_BUDGET,
    show_default=True,
    help="suppress mode with --class-remap: training samples the proxy sees.",
)
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
    "--solver-steps",
    type=click.IntRange(0, MAX_STEPS),
    default=None,
    help="Dual-ascent steps of the lagrangian solver (default 0: bound-propagation multipliers). "
    "More steps size each patch by a tighter bound (6: push 47 instead of 82 logits on "
    "Fashion-MNIST) and cost time; every bound is certified either way.",
)
@click.option(
    "--gate",
    type=click.Choice([*GATES, AUTO]),
    default=AUTO,
    show_default=True,
    help=(
        f"Support gate; auto: tree from {ROUTED_FROM} patches on (routed for a model whose "
        "ai.onnx.ml opset is 5 or later), activation below."
    ),
)
@click.option(
    "--target-policy",
    type=click.Choice(list(POLICY_NAMES)),
    default=None,
    help="Default: calibrated with --prepared, else runner-up. calibrated: forgotten samples "
    "get the output of a model that never saw them (targets from --prepared, else from --test).",
)
@click.option(
    "--prepared",
    "prepared_path",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder written by prune prepare (cross-fitted targets for --target-policy calibrated).",
)
@click.option(
    "--calibration",
    type=click.Choice(list(CALIBRATIONS)),
    default="temperature",
    show_default=True,
    help="Map of the prepared models' logits onto the scale of a model trained on all the "
    "data (temperature), on the retained data (retained, extrapolated), or none.",
)
@click.option(
    "--calibrated-tolerance",
    "calibrated_tolerance",
    type=click.FloatRange(min=0.0),
    default=DEFAULT_TOLERANCE,
    show_default=True,
    help="calibrated: how far (logits) the true-class margin may rise above the target's "
    "anywhere in a patched region (0: flat over the region).",
)
@click.option(
    "--strategy", type=click.Choice(list(STRATEGIES)), default="individual", show_default=True
)
@click.option(
    "--margin",
    type=float,
    callback=finite_range(0.0, 1e4),
    default=DEFAULT_MARGIN,
    show_default=True,
    help="Certified logit margin of every claim.",
)
@click.option(
    "--n",
    "n",
    type=float,
    callback=finite_range(0.0, 1e12),
    default=DEFAULT_N,
    show_default=True,
    help="Support sharpness (band 1/n).",
)
@click.option(
    "--cut",
    type=str,
    default=None,
    help="Tensor to patch after (default: the input if the model is piecewise linear, else the "
    "earliest tensor after which it is; `prune inspect MODEL` lists them). A cut before a "
    "MaxPool puts the pooling in the head (finer regions; the committed original is then the "
    "rewritten model, PROOF/original.onnx).",
)
@click.option(
    "--box",
    "box_text",
    type=str,
    default=None,
    metavar="LOW,HIGH",
    help="Declared input box of the cut space (sample deletion). Default: from the training "
    "data's cut values (one onnxruntime pass over --train for a model with a prefix); reuse "
    "an earlier proof's summary.json method.input_box to skip that pass on later requests.",
)
@click.option(
    "--retained-accuracy/--no-retained-accuracy",
    default=True,
    show_default=True,
    help="Measure the accuracy on the retained training rows before and after (two "
    "onnxruntime passes over --train). Off: the forget rows and --test only, for large "
    "training sets; the MaxPool re-cut of a coarse default cut then cannot be judged and is "
    "not tried.",
)
@click.option(
    "--seed", type=SEED, default=0, show_default=True, help="Seeds target choice and clustering."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Cap torch threads while solving (default: torch's own setting).",
)
@click.option(
    "--decoys",
    type=click.IntRange(0, 1000),
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
    class_mode: str,
    class_margin: float,
    class_remap: bool,
    proxy_budget: int,
    test_path: Path | None,
    key_path: Path | None,
    out: Path,
    solver: str,
    solver_steps: int | None,
    gate: str,
    target_policy: str | None,
    prepared_path: Path | None,
    calibration: str,
    calibrated_tolerance: float,
    strategy: str,
    margin: float,
    n: float,
    cut: str | None,
    box_text: str | None,
    retained_accuracy: bool,
    seed: int,
    threads: int | None,
    decoys: int,
    quiet: bool,
) -> None:
    """Patch MODEL so that it forgets training samples; write PROOF/model.onnx and summary.json
    (and, with --key, the signed certificate, model signature, openings and receipts)."""
    if (forget_indices is None) == (forget_class is None):
        raise DataError("give exactly one of --forget-indices FILE and --forget-class K")
    make_solver(solver, steps=solver_steps)  # refuses steps off the lagrangian, before any read
    box = _parse_box(box_text)
    if forget_class is not None and (box is not None or not retained_accuracy):
        raise DataError("--box and --no-retained-accuracy are for --forget-indices")
    check_output_folder(out, inputs=[model, train_path, test_path, forget_indices, key_path])
    if out.exists() and any(out.iterdir()):
        raise PruneError(f"output folder {out} exists and is not empty")
    raw, embedded = read_model(model, limit=_MAX_MODEL, cut=cut)  # embeds external data too
    x_train, y_train = load_npz(train_path)
    x_test, y_test = load_npz(test_path) if test_path is not None else (None, None)
    indices = read_forget_indices(forget_indices) if forget_indices is not None else None
    if decoys and indices is None:
        raise DataError("--decoys needs --forget-indices (a class deletion has no requesters)")
    if decoys and indices is not None:
        rng = np.random.default_rng()  # OS entropy: outsiders must not reproduce the decoys
        plan = add_decoys(indices, n_train=len(y_train), per_request=decoys, rng=rng)
        indices = plan.forget_indices.tolist()
    prepared = None
    if prepared_path is not None:
        if target_policy not in (None, "calibrated"):
            raise DataError("--prepared is only used with --target-policy calibrated")
        from prune.calibrate import load_prepared

        prepared = load_prepared(prepared_path, model=raw, x_train=x_train, y_train=y_train)
    passphrase = _open_key(key_path) if key_path is not None else None

    def run(raw: bytes, cut: str | None) -> UnlearnResult:
        return unlearn(
            raw,
            x_train,
            y_train,
            forget_indices=indices,
            forget_class=forget_class,
            class_mode=class_mode,  # type: ignore[arg-type]  # click.Choice over CLASS_MODES
            class_margin=class_margin,
            class_remap=class_remap,
            proxy_budget=proxy_budget,
            x_test=x_test,
            y_test=y_test,
            solver=solver,
            solver_steps=solver_steps,
            gate=gate,
            target_policy=target_policy,
            strategy=strategy,
            margin=margin,
            n=n,
            cut=cut,
            seed=seed,
            progress=show_progress(quiet),
            threads=threads,
            prepared=prepared,
            calibration=calibration,
            calibrated_tolerance=calibrated_tolerance,
            box=box,
            retained_accuracy=retained_accuracy,
        )

    result = run(raw, cut)
    if cut is None and forget_class is None and prepared is None and retained_accuracy:
        raw, embedded, result = _finer_when_coarse(model, raw, embedded, result, run)
    if key_path is not None and not result.complete:
        raise PruneError(
            f"{len(result.failed)} of {len(result.forget_y)} forget samples could not be changed "
            f"and certified (first leaf {result.failed[0]}); refusing to sign an incomplete proof "
            "(try a larger --margin, another --solver or --n)"
        )

    def sign(folder: Path) -> None:
        if embedded:  # the committed original is the self-contained model the auditor replays
            (folder / ORIGINAL_EMBEDDED).write_bytes(raw)
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
    if embedded:
        click.echo(
            "the model was normalised on import (external data embedded, float64 converted to "
            "float32, a fixed batch freed or MaxPool rewritten, as it needed: docs/FORMATS.md): "
            f"the committed original is {out}/{ORIGINAL_EMBEDDED} (give it to "
            "`audit verify --original`)"
        )
    if result.failed:
        click.echo(
            f"prune: warning: {len(result.failed)} forget samples could not be changed and "
            f"certified (leaf indices in {out}/summary.json)",
            err=True,
        )


def _parse_box(text: str | None) -> InputBox | None:
    """``--box LOW,HIGH``: two numbers that make an :class:`InputBox` (finite, LOW < HIGH,
    within float32's range)."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        low, high = (float(v) for v in parts)
    except ValueError:
        raise DataError(f"--box takes LOW,HIGH (two numbers), got {text!r}") from None
    try:
        return InputBox(low=low, high=high, source="declared")
    except DataError as exc:
        raise DataError(f"--box {text!r}: {exc}") from None


COARSE_DROP = 0.005
"""A fall in retained-data accuracy (half a point; test accuracy may fall a little more) above
which ``prune unlearn``, left to choose the cut, re-patches with the pooling in the head."""


def _finer_when_coarse(
    model: Path,
    raw: bytes,
    embedded: bool,
    result: UnlearnResult,
    run: Callable[[bytes, str | None], UnlearnResult],
) -> tuple[bytes, bool, UnlearnResult]:
    """Whole-region patches change every input of a forgotten sample's region. After the default
    cut of a CNN whose narrow dense head follows its last MaxPool the regions are coarse, and the
    retained data's accuracy can fall by tens of points (docs/BENCHMARKS.md, "Narrow heads
    after a MaxPool"). When it fell by more than :data:`COARSE_DROP` and a cut before the pooling
    exists (:func:`prune.model.pooling_cuts`, finest first), patch again with the pooling in the
    head and keep the run whose retained accuracy fell less. The owner's own training data
    decides; the auditor checks whichever model is committed (``PROOF/original.onnx``)."""
    from prune.model import pooling_cuts

    s = result.summary
    drop = float(s["retain_accuracy_before"]) - float(s["retain_accuracy_after"])
    if drop <= COARSE_DROP:
        return raw, embedded, result
    finer = pooling_cuts(raw)
    if not finer:
        return raw, embedded, result
    cut = finer[0].tensor
    click.echo(
        f"prune: the default cut cost {100 * drop:.2f} points of retained accuracy (coarse "
        f"regions); patching again with the MaxPool in the head (--cut {cut})",
        err=True,
    )
    pooled, _ = read_model(model, limit=_MAX_MODEL, cut=cut)
    again = run(pooled, cut)
    t = again.summary
    if float(t["retain_accuracy_before"]) - float(t["retain_accuracy_after"]) < drop:
        return pooled, True, again
    return raw, embedded, result
