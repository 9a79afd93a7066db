"""``python -m benchmarks.study``: the benchmark study's command line.

    python -m benchmarks.study run --config quick        # digits only, a few minutes
    python -m benchmarks.study run --config default      # the recorded study (about 1-2 h, 2 cores)
    python -m benchmarks.study run --config default --only 'fashion-mnist/mlp/*'
    python -m benchmarks.study run --config default --backend dask --address tcp://HOST:8786
    python -m benchmarks.study status --config default
    python -m benchmarks.study summarise                 # CSV + docs/BENCHMARKS.md + docs/img/*.svg

``cell`` and ``artifact`` are the internal per-process steps the runner starts.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from audit.cli._cluster import cluster_options
from benchmarks.study.common import StudyError, StudyPaths, read_json, write_json
from benchmarks.study.plan import CONFIGS, Cell, cells_for
from benchmarks.study.runner import REPO, RunOptions, run_cells, select

_WORK = REPO / "benchmarks" / "runs" / "study"
_RESULTS = REPO / "benchmarks" / "results" / "study"
_DOCS = REPO / "docs"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except StudyError as exc:
            click.echo(f"study: error: {exc}", err=True)
            ctx.exit(2)


def _paths(work: Path, results: Path, docs: Path) -> StudyPaths:
    return StudyPaths(work=work, results=results, docs=docs)


_work_opt = click.option(
    "--work", type=click.Path(path_type=Path), default=_WORK, show_default=True
)
_results_opt = click.option(
    "--results", type=click.Path(path_type=Path), default=_RESULTS, show_default=True
)
_docs_opt = click.option(
    "--docs", type=click.Path(path_type=Path), default=_DOCS, show_default=True
)
_threads_opt = click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="torch/ORT threads per cell.",
)


@click.group(cls=_Group)
def cli() -> None:
    """Benchmark study: PRUNE next to retraining and the usual unlearning baselines."""


def _config_cells(config: str) -> list[Cell]:
    if config not in CONFIGS:
        raise StudyError(f"unknown config {config!r} (choose {', '.join(CONFIGS)})")
    return cells_for(config)


@cli.command()
@click.option("--config", "config", default="quick", show_default=True)
@click.option(
    "--only", multiple=True, help="Glob on dataset/arch/setting/variant/sSEED; repeatable."
)
@click.option("--skip", multiple=True, help="Glob of cells to leave out; repeatable.")
@_work_opt
@_results_opt
@_threads_opt
@click.option("--timeout", "timeout_s", type=float, default=3600.0, show_default=True)
@click.option(
    "--retry-failed", is_flag=True, help="Rerun cells whose recorded result is a failure."
)
@cluster_options
def run(
    config: str,
    only: tuple[str, ...],
    skip: tuple[str, ...],
    work: Path,
    results: Path,
    threads: int,
    timeout_s: float,
    retry_failed: bool,
    backend: str,
    address: str | None,
    jobs: int,
) -> None:
    """Run every cell of CONFIG that has no result yet (resumable)."""
    cells = select(_config_cells(config), only)
    if skip:
        dropped = {c.key() for c in select(cells, skip)}
        cells = [c for c in cells if c.key() not in dropped]
    if not cells:
        raise StudyError("no cell matches --only")
    paths = _paths(work, results, _DOCS)
    counts = run_cells(
        cells,
        paths,
        RunOptions(
            threads=threads,
            timeout_s=timeout_s,
            retry_failed=retry_failed,
            backend=backend,
            address=address,
            jobs=jobs,
        ),
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(
        f"{counts['ran']} ran, {counts['skipped']} already recorded, {counts['failed']} failed"
    )


@cli.command()
@click.option("--config", "config", default="default", show_default=True)
@_results_opt
def status(config: str, results: Path) -> None:
    """Which cells of CONFIG are recorded, failed or missing."""
    counts = {"ok": 0, "failed": 0, "missing": 0}
    for cell in _config_cells(config):
        path = results / "cells" / f"{cell.key()}.json"
        state = read_json(path).get("status", "failed") if path.is_file() else "missing"
        counts[state if state in counts else "failed"] += 1
        if state != "ok":
            click.echo(f"{state:8s} {cell.name()}")
    click.echo(", ".join(f"{v} {k}" for k, v in counts.items()))


@cli.command("summarise")
@_results_opt
@_docs_opt
def summarise_cmd(results: Path, docs: Path) -> None:
    """Write results.csv, docs/BENCHMARKS.md and its SVG plots from the recorded cells."""
    from benchmarks.study.summarise import summarise

    written = summarise(results=results, docs=docs)
    for path in written:
        click.echo(str(path))


@cli.command(hidden=True)
@click.option("--spec", required=True)
@_work_opt
@click.option("--out", type=click.Path(path_type=Path), required=True)
@_threads_opt
def cell(spec: str, work: Path, out: Path, threads: int) -> None:
    """Internal: run one cell in this process and write its result."""
    from benchmarks.study.cell import run_cell

    try:
        doc = run_cell(Cell.from_json(json.loads(spec)), work=work, threads=threads)
    except Exception as exc:  # one line for the runner's record; the traceback stays in stderr
        traceback.print_exc()
        click.echo(
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", err=True
        )
        sys.exit(1)
    write_json(out, doc)


@cli.command(hidden=True)
@click.option("--spec", required=True)
@_work_opt
@_threads_opt
def artifact(spec: str, work: Path, threads: int) -> None:
    """Internal: build one cached artifact in this process."""
    import torch

    from benchmarks.study.artifacts import BUILDERS, ArtifactKey

    torch.set_num_threads(threads)
    doc = json.loads(spec)
    key = ArtifactKey(**doc)
    try:
        BUILDERS[key.kind](key, work)
    except Exception as exc:
        traceback.print_exc()
        click.echo(
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", err=True
        )
        sys.exit(1)


if __name__ == "__main__":
    cli(prog_name="python -m benchmarks.study")
