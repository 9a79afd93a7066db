"""``prune inspect``: which tensors of a model are valid cuts, and why the others are not."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from prune.errors import ModelImportError
from prune.model import PLHead, inspect_model, load_model, pooling_cuts, read_model

__all__ = ["inspect_command"]


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--all", "show_all", is_flag=True, help="Also list every refused tensor.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (version 1).")
def inspect_command(model: Path, show_all: bool, as_json: bool) -> None:
    """List MODEL's piecewise-linear part: the logits and output tail, the default cut, every
    valid cut (with its head's activations and dense size) and why the other tensors are not."""
    raw, _ = read_model(model)
    index, reports = inspect_model(raw)
    try:
        default: PLHead | None = load_model(raw).head
        why_none = ""
    except ModelImportError as exc:
        default, why_none = None, str(exc)
    tail_ops = [index.nodes[i].op_type for i in index.tail]
    pooled = pooling_cuts(raw)
    if as_json:
        doc = {
            "version": 1,
            "input": index.input_name,
            "logits": index.output_name,
            "outputs": list(index.outputs),
            "tail": tail_ops,
            "default_cut": None if default is None else default.cut,
            "breakpoints": [] if default is None else list(default.hidden),
            "default_error": why_none,
            "cuts": [
                {
                    "tensor": r.tensor,
                    "valid": r.ok,
                    "reason": r.reason,
                    "activations": r.activations,
                    "dense_entries": r.dense_entries,
                }
                for r in reports
            ],
            "pooling_cuts": [
                {"tensor": r.tensor, "activations": r.activations, "dense_entries": r.dense_entries}
                for r in pooled
            ],
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    click.echo(f"input:   {index.input_name}")
    click.echo(f"logits:  {index.output_name}")
    click.echo(f"outputs: {', '.join(index.outputs)}")
    click.echo(
        f"tail:    {' -> '.join(tail_ops) if tail_ops else '(none: the logits are the output)'}"
    )
    if default is None:
        click.echo(f"default cut: none ({why_none})")
    else:
        click.echo(
            f"default cut: {default.cut} ({len(default.hidden_sizes)} hidden layers after it)"
        )
    valid = [r for r in reports if r.ok]
    click.echo(f"valid cuts ({len(valid)}):")
    for r in valid:
        ops = ", ".join(f"{n} {op}" for op, n in Counter(r.breakpoint_ops).items())
        click.echo(
            f"  {r.tensor}  [{r.activations} piecewise-linear activations ({ops}), "
            f"{r.dense_entries:,} weights]"
        )
    if pooled:
        click.echo(
            f"valid with MaxPool in the head ({len(pooled)}; `--cut T` rewrites the pooling, "
            "finer regions):"
        )
        for r in pooled:
            click.echo(
                f"  {r.tensor}  [{r.activations} piecewise-linear activations, "
                f"{r.dense_entries:,} weights]"
            )
    refused = [r for r in reports if not r.ok]
    if refused and not show_all:
        click.echo(f"refused: {len(refused)} tensors (--all lists them); at the input:")
        click.echo(f"  {refused[0].tensor}: {refused[0].reason}")
    elif refused:
        click.echo(f"refused ({len(refused)}):")
        for r in refused:
            click.echo(f"  {r.tensor}: {r.reason}")
