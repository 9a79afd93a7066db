"""``audit verify``: check a proof folder fail-closed; table on the terminal, ``--json`` for
machines; exit 0 verified, 1 a check failed, 2 bad input or usage."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import numpy as np

from audit.cli._cluster import cluster_options
from audit.cli._common import sandbox_options, show_progress
from audit.errors import InputError
from audit.verify import (
    CHECKS,
    CheckOutcome,
    MembershipPolicy,
    Policy,
    VerifyInputs,
    render_table,
    verify_proof,
)
from prune.formats import output_problem, write_atomic

MIA_ATTACKS = (
    "loss",
    "confidence",
    "entropy",
    "shadow",
    "lira",
    "rmia",
    "gap",
    "boundary",
    "cmia",
)
"""The names of :data:`audit.mia.ATTACKS` (a test keeps them equal; importing the registry here
would load torch for every ``audit verify``)."""

__all__ = ["check_output", "verify", "write_json"]

_PATH = click.Path(path_type=Path)
_DEFAULTS = Policy()


def check_output(path: Path | None, *, inputs: Sequence[Path | None]) -> None:
    """Refuse an unusable ``--json`` path before any work (exit 2): never an input, a folder,
    a link or in an unwritable folder (``-`` is stdout)."""
    if path is None or str(path) == "-":
        return
    problem = output_problem(path, inputs=inputs)
    if problem is not None:
        raise InputError(f"--json: {problem}")


def write_json(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``-`` is stdout): nothing half-written, no
    temporary file left on any path."""
    if str(path) == "-":
        click.echo(text, nl=False)
        return
    problem = output_problem(path)
    if problem is not None:
        raise InputError(f"--json: {problem}")
    try:
        write_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        raise InputError(f"--json: cannot write {path}: {exc.strerror or exc}") from None


@click.command()
@click.argument("proof", type=click.Path(path_type=Path, file_okay=False))
@click.option("--public-key", type=_PATH, required=True, help="The owner's public key (PEM).")
@click.option("--original", type=_PATH, help="The committed original model (WORK/model.onnx).")
@click.option("--forget", type=_PATH, help="The forget-set openings (PROOF/forget.npz).")
@click.option("--reference", type=_PATH, help="Reference data .npz (x, y), e.g. WORK/test.npz.")
@click.option("--json", "json_out", type=_PATH, help="Write the JSON report here ('-': stdout).")
@click.option("--nonce-store", type=_PATH, help="File of accepted nonces (checked and updated).")
@click.option(
    "--max-age",
    type=click.IntRange(min=1),
    default=365,
    show_default=True,
    help="Oldest acceptable certificate, in days.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="onnxruntime provider: CUDA when present (auto), or forced.",
)
@click.option(
    "--probes",
    type=click.IntRange(min=1),
    default=_DEFAULTS.probe_directions,
    show_default=True,
    help="Random directions probed per certified region.",
)
@click.option(
    "--probe-claims",
    type=click.IntRange(min=0),
    default=_DEFAULTS.probe_claims,
    show_default=True,
    help="Probe this many certified claims, drawn at random (0: all); every certified claim "
    "is proved by region.certificate, probes are defence in depth.",
)
@click.option(
    "--lp-claims",
    type=click.IntRange(min=0),
    default=_DEFAULTS.lp_claims,
    show_default=True,
    help="Certified regions (weakest probe slack first) also checked exactly by LP (0: none).",
)
@click.option(
    "--lp-classes",
    type=click.IntRange(min=0),
    default=_DEFAULTS.lp_classes,
    show_default=True,
    help="At most this many LPs per --lp-claims region, the classes its probes came closest "
    "to first (0: every class a bound does not settle).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed for the probe points (default: fresh OS entropy, recorded in --json).",
)
@click.option(
    "--partial",
    is_flag=True,
    help="Allow a verdict without --original/--forget/--reference; their checks do not run.",
)
@click.option(
    "--check",
    "checks",
    multiple=True,
    type=click.Choice(list(CHECKS)),
    help="Run only these checks (repeatable).",
)
@click.option(
    "--mia",
    "mia_attack",
    type=click.Choice(MIA_ATTACKS),
    default=None,
    help="Also run the membership.inference check with this attack (trains reference models).",
)
@click.option("--mia-shadow-models", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--mia-sides",
    type=click.Choice(["one", "two"]),
    default="one",
    show_default=True,
    help="one: fail if the forget set still looks like members; two: also if it stands out as deleted.",
)
@click.option(
    "--mia-max-gap",
    type=click.FloatRange(0, 0.5),
    default=0.1,
    show_default=True,
    help="Largest tolerated |AUC - 0.5| in a failing direction.",
)
@click.option(
    "--mia-max-tpr",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="Largest tolerated TPR at 1% FPR in a failing direction.",
)
@click.option("--arch", default=None, help="Declare the reference models' architecture (e.g. cnn).")
@cluster_options
@click.option(
    "--accept-point-only",
    is_flag=True,
    help="Exit 0 on the point-only verdict (claims that hold at their samples, not regions).",
)
@click.option(
    "--min-margin",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.min_certified_margin,
    show_default=True,
    help="Smallest certified margin a claim may state.",
)
@click.option(
    "--min-class-margin",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.min_class_margin,
    show_default=True,
    help="Smallest margin a class-suppression claim may state (the class keeps <= e^-m).",
)
@click.option(
    "--band-work",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.band_work,
    show_default=True,
    help="Most multiply-adds structure.patch may spend on deeper rows of the claims' regions "
    "for the thin-band rule; a proof that needs more fails.",
)
@click.option(
    "--expect-class",
    type=click.IntRange(min=0),
    default=None,
    help="The class whose deletion was requested: a certificate of another class or mode fails.",
)
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed check.")
@click.option("--quiet", is_flag=True, help="No table, no progress; only errors and --json.")
@sandbox_options
def verify(
    proof: Path,
    public_key: Path,
    original: Path | None,
    forget: Path | None,
    reference: Path | None,
    json_out: Path | None,
    nonce_store: Path | None,
    max_age: int,
    device: str,
    probes: int,
    probe_claims: int | None,
    lp_claims: int,
    lp_classes: int,
    seed: int | None,
    partial: bool,
    checks: tuple[str, ...],
    mia_attack: str | None,
    mia_shadow_models: int,
    mia_sides: str,
    mia_max_gap: float,
    mia_max_tpr: float,
    arch: str | None,
    backend: str,
    address: str | None,
    jobs: int,
    accept_point_only: bool,
    min_margin: float,
    min_class_margin: float,
    band_work: float,
    expect_class: int | None,
    fail_fast: bool,
    quiet: bool,
) -> None:
    """Verify the unlearning proof in PROOF against the owner's public key.

    Every check re-derives its evidence from the files (signatures, digests, Merkle openings,
    onnxruntime replay, region probes, structure diff, locality, utility). The verdict is
    VERIFIED only if every check passed; by default --original, --forget and --reference are
    required (use --partial to accept fewer inputs, with the skipped checks listed).
    """
    check_output(json_out, inputs=[proof, public_key, original, forget, reference, nonce_store])
    policy = Policy(
        max_age=timedelta(days=max_age),
        probe_directions=probes,
        probe_claims=probe_claims or None,
        lp_claims=lp_claims,
        lp_classes=lp_classes,
        accept_point_only=accept_point_only,
        min_certified_margin=min_margin,
        min_class_margin=min_class_margin,
        band_work=band_work,
        expected_class=expect_class,
        membership=None
        if mia_attack is None
        else MembershipPolicy(
            attack=mia_attack,
            reference_models=mia_shadow_models,
            sides="two" if mia_sides == "two" else "one",
            max_gap=mia_max_gap,
            max_tpr=mia_max_tpr,
            arch=arch,
            backend=backend,
            address=address,
            jobs=jobs,
        ),
    )
    if partial:
        policy = policy.partial()
    seed = secrets.randbits(63) if seed is None else seed
    progress = show_progress(quiet)

    def done(outcome: CheckOutcome) -> None:
        if progress:
            click.echo(f"  {outcome.status:7} {outcome.name}", err=True)

    report = verify_proof(
        VerifyInputs(
            proof=proof,
            public_key=public_key,
            original=original,
            forget=forget,
            reference=reference,
            nonce_store=nonce_store,
        ),
        now=datetime.now(UTC),
        rng=np.random.default_rng(seed),
        policy=policy,
        device=device,
        checks=list(checks) or None,
        on_done=done,
        fail_fast=fail_fast,
    )
    if json_out is not None:
        doc = report.to_json()
        doc["settings"]["seed"] = seed
        write_json(json_out, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if not quiet and str(json_out) != "-":
        click.echo(render_table(report))
    report.raise_for_failure()
