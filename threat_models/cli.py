"""Command line of the threat model: ``matrix`` (every adversary against the auditor) and
``sampling`` (how likely a k-of-N spot check misses a cheat)."""

from __future__ import annotations

import json
from typing import Any

import click

from threat_models.sampling import miss_probability, replays_needed

__all__ = ["cli", "main"]


@click.group()
def cli() -> None:
    """The dishonest-owner threat model, executable."""


@cli.command()
@click.option("--n", "sizes", type=click.IntRange(min=1), multiple=True, default=(600, 6000))
@click.option(
    "--f", "fractions", type=click.FloatRange(0, 1), multiple=True, default=(0.01, 0.05, 0.1)
)
@click.option("--k", "ks", type=click.IntRange(min=0), multiple=True, default=(10, 50, 100, 300))
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01)
@click.option("--json", "as_json", is_flag=True, help="Print a versioned JSON document.")
def sampling(
    sizes: tuple[int, ...],
    fractions: tuple[float, ...],
    ks: tuple[int, ...],
    alpha: float,
    as_json: bool,
) -> None:
    """Probability that replaying k of N forget points misses a cheat on a fraction f of them."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        for f in fractions:
            rows.append(
                {
                    "n": n,
                    "f": f,
                    "miss": {str(k): miss_probability(n=n, k=min(k, n), f=f) for k in ks},
                    "k_needed": replays_needed(n=n, f=f, alpha=alpha),
                }
            )
    if as_json:
        doc = {
            "version": 1,
            "type": "https://prune-audit.dev/spot-check/v1",
            "alpha": alpha,
            "rows": rows,
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    header = ["N", "f", *(f"k={k}" for k in ks), f"k for P(miss)<={alpha:g}"]
    click.echo(" | ".join(header))
    for row in rows:
        cells = [str(row["n"]), f"{row['f']:.0%}"]
        cells += [f"{row['miss'][str(k)]:.4g}" for k in ks]
        cells.append(str(row["k_needed"]))
        click.echo(" | ".join(cells))


def main() -> None:
    cli(prog_name="python -m threat_models")
