"""The owner's training recipe, read from the ``train.json`` that ``prune train`` writes.

Reference models are only as strong as their likeness to the target: the same architecture,
epochs, batch size, learning rate, weight decay and training-set size. The auditor reads these
facts from the owner's ``train.json`` (they are the owner's claims about its own training; a
wrong claim weakens the attack, it cannot make it report leakage that is not there) and every
field can be overridden. Recognised layout (``version`` 1)::

    {"version": 1, "config": {"arch": "mlp", "hidden": [64, 64], "epochs": 60,
     "batch_size": 128, "lr": 0.001, "weight_decay": 0.0, ...}, "train_size": 1000, ...}

``train_size`` is optional (``prune train`` does not write it; the auditor then uses the size of
the members it is given, or half its reference data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import InputError
from audit.mia._train import TrainingRecipe
from audit.proof import read_bounded

__all__ = ["OwnerRecipe", "read_train_json"]

_MAX_BYTES = 1 << 20
_FIELDS = {"epochs": int, "batch_size": int, "lr": float, "weight_decay": float}


@dataclass(frozen=True)
class OwnerRecipe:
    """What ``train.json`` says: the recipe fields it had, the architecture declaration
    (``mlp:64,64`` / ``cnn:64``) when it names one, and the training-set size when given."""

    fields: dict[str, Any]
    arch: str | None
    train_size: int | None

    def recipe(self, **overrides: Any) -> TrainingRecipe:
        """The owner's recipe with ``overrides`` (``None`` values ignored) on top of
        :class:`TrainingRecipe`'s defaults for fields the file does not give."""
        merged = {**self.fields, **{k: v for k, v in overrides.items() if v is not None}}
        return TrainingRecipe(**merged)


def read_train_json(path: Path) -> OwnerRecipe:
    """Parse the owner's ``train.json``; one-line :class:`InputError` on anything malformed."""
    raw = read_bounded(path, _MAX_BYTES, what="train.json", owner=False)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not JSON ({exc.__class__.__name__})") from exc
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise InputError(f"{path}: expected a version 1 train.json object")
    config = doc.get("config", {})
    if not isinstance(config, dict):
        raise InputError(f"{path}: 'config' must be an object")
    fields: dict[str, Any] = {}
    for name, kind in _FIELDS.items():
        if name not in config:
            continue
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{path}: config.{name} must be a number")
        if kind is int and value != int(value):
            raise InputError(f"{path}: config.{name} must be an integer")
        fields[name] = kind(value)
    TrainingRecipe(**fields)  # validates ranges with a one-line error
    arch = None
    kind_name = config.get("arch")
    if kind_name is not None:
        if kind_name not in ("mlp", "cnn"):
            raise InputError(f"{path}: unknown config.arch {kind_name!r}")
        hidden = config.get("hidden", [])
        if not isinstance(hidden, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
        ):
            raise InputError(f"{path}: config.hidden must be a list of positive integers")
        widths = hidden[:1] if kind_name == "cnn" else hidden
        arch = f"{kind_name}:{','.join(str(h) for h in widths)}" if widths else kind_name
    size = doc.get("train_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise InputError(f"{path}: train_size must be a positive integer")
    return OwnerRecipe(fields, arch, size)
