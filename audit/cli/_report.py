"""``audit report``, ``audit keygen`` and ``audit attestation``: the filed report, the auditor's
key, and the check a third party runs on the auditor's signed attestation."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from audit.attest import generate_auditor_key, load_public_key, verify_attestation
from audit.cli._cluster import cluster_options
from audit.cli._common import EXIT_FAILED, sandbox_options, show_progress
from audit.proof import Limits, read_bounded
from audit.report import ReportOptions, build_report
from audit.verify import CheckOutcome
from prune.formats import sha256_hex

__all__ = ["attestation", "keygen", "report"]

_PATH = click.Path(path_type=Path)


@click.command()
@click.argument("proof", type=click.Path(path_type=Path, file_okay=False))
@click.option("--public-key", type=_PATH, required=True, help="The owner's public key (PEM).")
@click.option("--original", type=_PATH, help="The committed original model (WORK/model.onnx).")
@click.option("--forget", type=_PATH, help="The forget-set openings (PROOF/forget.npz).")
@click.option("--reference", type=_PATH, help="The auditor's reference data .npz (x, y).")
@click.option("--out", type=_PATH, required=True, help="Report folder, e.g. reports/NAME.")
@click.option("--name", default=None, help="Title of the report (default: the folder name).")
@click.option("--auditor-key", type=_PATH, help="Sign an attestation with this auditor key (PEM).")
@click.option(
    "--mia",
    "mia_attacks",
    default="rmia,loss",
    show_default=True,
    help="Comma-separated membership-inference attacks for the unlearning game; 'none' to skip.",
)
@click.option("--shadow-models", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--mia-sides",
    type=click.Choice(["one", "two"]),
    default="one",
    show_default=True,
    help="two: a forget set that looks *less* like members than non-members (deleted) also "
    "fails, and the two-version comparison is reported.",
)
@click.option(
    "--arch", default=None, help="Declare the architecture for reference models (e.g. cnn)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@cluster_options
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--quiet", is_flag=True, help="No progress output.")
@sandbox_options
def report(
    proof: Path,
    public_key: Path,
    original: Path | None,
    forget: Path | None,
    reference: Path | None,
    out: Path,
    name: str | None,
    auditor_key: Path | None,
    mia_attacks: str,
    shadow_models: int,
    mia_sides: str,
    arch: str | None,
    seed: int,
    backend: str,
    address: str | None,
    jobs: int,
    device: str,
    quiet: bool,
) -> None:
    """Verify PROOF, run membership inference, and write OUT/report.html, OUT/report.json (and
    OUT/attestation.json with --auditor-key). Exit 0 verified, 1 not verified (the report is
    still written), 2 bad input."""
    attacks = (
        ()
        if mia_attacks.strip().lower() == "none"
        else tuple(a.strip() for a in mia_attacks.split(",") if a.strip())
    )
    progress = show_progress(quiet)

    def on_check(outcome: CheckOutcome) -> None:
        if not quiet:
            click.echo(f"  {outcome.status:7s} {outcome.name}", err=True)

    result = build_report(
        proof=proof,
        public_key=public_key,
        out=out,
        options=ReportOptions(
            name=name or out.name,
            mia_attacks=attacks,
            mia_reference_models=shadow_models,
            mia_sides="two" if mia_sides == "two" else "one",
            mia_arch=arch,
            mia_backend=backend,
            mia_address=address,
            mia_jobs=jobs,
            seed=seed,
            device=device,
            command=tuple(sys.argv),
        ),
        original=original,
        forget=forget,
        reference=reference,
        auditor_key=auditor_key,
        progress=progress,
        on_check=on_check,
    )
    click.echo(f"verdict: {result.verification.verdict}")
    click.echo(f"report: {out / 'report.html'}")
    if not result.verified:
        sys.exit(EXIT_FAILED)


@click.command()
@click.option(
    "--out", type=_PATH, required=True, help="Folder for auditor.key (0600) and auditor.pub."
)
def keygen(out: Path) -> None:
    """Create the auditor's ECDSA P-256 key pair (passphrase from AUDIT_KEY_PASSPHRASE, if set)."""
    import os

    passphrase = os.environ.get("AUDIT_KEY_PASSPHRASE")
    key_path, pub_path = generate_auditor_key(
        out, passphrase=passphrase.encode() if passphrase else None
    )
    click.echo(f"wrote {key_path} and {pub_path}")


@click.command()
@click.argument("attestation_file", metavar="ATTESTATION", type=_PATH)
@click.option(
    "--auditor-public-key", type=_PATH, required=True, help="The auditor's public key (PEM)."
)
@click.option("--report", "report_json", type=_PATH, help="report.json the attestation must cover.")
@click.option("--model", type=_PATH, help="The model file the attestation must be about.")
def attestation(
    attestation_file: Path, auditor_public_key: Path, report_json: Path | None, model: Path | None
) -> None:
    """Check an auditor's signed attestation (and optionally that it covers REPORT and MODEL).
    Exit 0 valid, 1 invalid, 2 bad input."""
    limits = Limits()
    data = read_bounded(attestation_file, limits.certificate_bytes, what="attestation", owner=False)
    model_sha = (
        sha256_hex(read_bounded(model, limits.model_bytes, what="--model", owner=False))
        if model is not None
        else None
    )
    report_sha = (
        sha256_hex(
            read_bounded(report_json, limits.certificate_bytes, what="--report", owner=False)
        )
        if report_json is not None
        else None
    )
    att = verify_attestation(
        data,
        load_public_key(auditor_public_key),
        model_sha256=model_sha,
        report_sha256=report_sha,
    )
    click.echo(
        f"attestation valid: auditor {att.auditor_key_id[:16]}..., verdict {att.verdict}, "
        f"{len(att.checks)} checks, model {att.model_sha256[:16]}..., created {att.created}"
    )
