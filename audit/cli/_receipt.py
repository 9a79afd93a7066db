"""``audit receipt``: a data subject checks one deletion receipt against the certificate (and,
with their sample, that the sample itself was committed); exit 0 / 1 / 2 as ``audit verify``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from audit.cli._common import sandbox_options
from audit.cli._verify import check_output, write_json
from audit.receipt import ReceiptInputs, verify_receipt
from audit.verify import render_table

__all__ = ["receipt"]

_PATH = click.Path(path_type=Path)


@click.command()
@click.argument("receipt_path", metavar="RECEIPT", type=_PATH)
@click.option("--certificate", type=_PATH, required=True, help="PROOF/certificate.json.")
@click.option("--public-key", type=_PATH, required=True, help="The owner's public key (PEM).")
@click.option("--sample", type=_PATH, help="Your sample as .npy (float32, as submitted).")
@click.option("--label", type=click.IntRange(0, 2**31 - 1), help="Your sample's label.")
@click.option(
    "--model", type=_PATH, help="The deployed model (PROOF/model.onnx): replay your sample."
)
@click.option("--json", "json_out", type=_PATH, help="Write the JSON report here ('-': stdout).")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--partial", is_flag=True, help="Check the receipt without your sample.")
@click.option("--quiet", is_flag=True, help="No table; only errors and --json.")
@sandbox_options
def receipt(
    receipt_path: Path,
    certificate: Path,
    public_key: Path,
    sample: Path | None,
    label: int | None,
    model: Path | None,
    json_out: Path | None,
    device: str,
    partial: bool,
    quiet: bool,
) -> None:
    """Check a deletion RECEIPT against the signed certificate.

    Without --sample/--label only the receipt itself can be checked, which proves nothing about
    your data: that needs --partial. With them, the sample must hash to the committed leaf.
    """
    check_output(json_out, inputs=[receipt_path, certificate, public_key, sample, model])
    report = verify_receipt(
        ReceiptInputs(
            receipt=receipt_path,
            certificate=certificate,
            public_key=public_key,
            sample=sample,
            label=label,
            model=model,
        ),
        now=datetime.now(UTC),
        partial=partial,
        device=device,
    )
    if json_out is not None:
        write_json(json_out, json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
    if not quiet and str(json_out) != "-":
        click.echo(render_table(report))
    report.raise_for_failure()
