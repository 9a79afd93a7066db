"""The options that choose where reference models train, shared by ``audit mia``,
``audit verify --mia`` and ``audit report`` (docs: README, "Reference models on a cluster")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["CLUSTER_BACKENDS", "cluster_options"]

F = TypeVar("F", bound=Callable[..., Any])

CLUSTER_BACKENDS = ("local", "ray", "dask")


def cluster_options(func: F) -> F:
    """``--backend``, ``--address`` and ``--jobs`` (keyword arguments of the same names)."""
    options = [
        click.option(
            "--backend",
            type=click.Choice(CLUSTER_BACKENDS),
            default="local",
            show_default=True,
            help="Where reference models train: local processes, a Ray or a Dask cluster "
            "(pip install 'prune-audit[cluster]').",
        ),
        click.option(
            "--address",
            default=None,
            help="Cluster to use: Ray 'HOST:PORT' (or 'auto'), Dask 'tcp://HOST:PORT'. "
            "Default: a local cluster started for the run (RAY_ADDRESS is honoured).",
        ),
        click.option(
            "--jobs",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Parallel trainings for the local backend (and the size of a started cluster).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
