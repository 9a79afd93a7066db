"""Command line of the threat model: ``matrix`` (every adversary against the auditor) and
``sampling`` (how likely a k-of-N spot check misses a cheat)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from threat_models.adversaries import ADVERSARIES, HONEST
from threat_models.errors import ThreatModelError
from threat_models.matrix import Row, merge_documents, run_matrix
from threat_models.render import render_document, render_matrix
from threat_models.sampling import miss_probability, replays_needed
from threat_models.scenario import MODES, Arch, DatasetName, Mode, ScenarioConfig

__all__ = ["cli", "main"]

EXIT_NOT_CAUGHT = 1
EXIT_BAD_INPUT = 2


class _ErrorHandlingGroup(click.Group):
    """Turns a :class:`ThreatModelError` into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ThreatModelError as exc:
            click.echo(f"threat_models: error: {exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)


@click.group(cls=_ErrorHandlingGroup)
def cli() -> None:
    """The dishonest-owner threat model, executable."""


@cli.command()
@click.option(
    "--seeds",
    "seeds",
    type=int,
    multiple=True,
    help="Seeds, e.g. --seeds 0 1 2 (default: 0 1 2); one scenario per seed.",
)
@click.argument("more_seeds", nargs=-1, type=int, metavar="")
@click.option(
    "--dataset",
    type=click.Choice(["digits", "fashion-mnist"]),
    default="digits",
    show_default=True,
    help="Data set of the owner's model (Fashion-MNIST: a cheap training subset, see JSON).",
)
@click.option(
    "--model",
    "arch",
    type=click.Choice(["mlp", "cnn"]),
    default="mlp",
    show_default=True,
    help="Architecture, trained with prune train's recipe.",
)
@click.option(
    "--mode",
    type=click.Choice(list(MODES)),
    default="sample",
    show_default=True,
    help="Deletion mode of the honest proof: sample deletion or class suppression.",
)
@click.option(
    "--adversary",
    "adversaries",
    multiple=True,
    type=click.Choice([a for a in ADVERSARIES if a != HONEST]),
    help="Run only these adversaries (repeatable); the honest owner always runs.",
)
@click.option(
    "--work",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep every scenario and proof in this new folder (default: a temporary one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON document.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the JSON document to this file (atomically).",
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
def matrix(
    seeds: tuple[int, ...],
    more_seeds: tuple[int, ...],
    dataset: DatasetName,
    arch: Arch,
    mode: Mode,
    adversaries: tuple[str, ...],
    work: Path | None,
    as_json: bool,
    out: Path | None,
    quiet: bool,
) -> None:
    """Run every adversary of the setting's mode and the honest owner against the auditor,
    print the matrix.

    Exit status 0 when every adversary is caught on every seed and the honest owner passes
    every check; 1 otherwise; 2 on bad input."""
    chosen = (*seeds, *more_seeds) or (0, 1, 2)
    if work is not None and work.exists():
        raise ThreatModelError(f"--work folder {work} already exists")
    root = work or Path(tempfile.mkdtemp(prefix="threat-matrix-"))
    progress = not quiet and sys.stderr.isatty()

    def show(row: Row) -> None:
        if progress:
            verdict = "not built" if not row.built else "ok" if row.ok else "NOT OK"
            click.echo(
                f"  seed {row.seed} {row.adversary:<26} {verdict} ({row.seconds:.1f} s)", err=True
            )

    try:
        result = run_matrix(
            seeds=chosen,
            root=root,
            now=datetime.now(UTC).replace(microsecond=0),
            adversaries=list(adversaries) or None,
            config=ScenarioConfig.setting(dataset, arch, mode),
            on_row=show,
        )
    finally:
        if work is None:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n"
    if out is not None:
        _write_atomically(out, text)
    if as_json:
        click.echo(text, nl=False)
    else:
        click.echo(render_matrix(result))
    if not result.ok:
        sys.exit(EXIT_NOT_CAUGHT)


@cli.command()
@click.argument(
    "documents", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False)
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Write the merged JSON document to this file (atomically).",
)
def merge(documents: tuple[Path, ...], out: Path) -> None:
    """Merge matrix documents of one setting run on disjoint seeds (e.g. one process per seed)
    and print the merged matrix.

    Exit status 0 when the merged matrix is ok, 1 otherwise, 2 on bad input."""
    docs = []
    for path in documents:
        try:
            docs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ThreatModelError(f"cannot read {path}: {exc}") from None
    merged = merge_documents(docs)
    _write_atomically(out, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    click.echo(render_document(merged))
    if not merged["ok"]:
        sys.exit(EXIT_NOT_CAUGHT)


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


def _write_atomically(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        raise ThreatModelError(f"--out: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    cli(prog_name="python -m threat_models")
