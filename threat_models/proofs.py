"""Owner-side proof writing for the adversaries: exactly what ``prune unlearn --key`` puts in a
proof folder (the patched model, ``summary.json``, then ``prune.proofs.write_signed_proof``), for
any outcome an adversary makes up, signed with the owner's *real* key.

Threat assumption: the dishonest owner holds its genuine signing key and the genuine tooling;
every adversary's proof is therefore as well-formed and as validly signed as an honest one, and
only what it claims or serves differs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.claims import CalibratedClaim, Claim
from prune.errors import PruneError
from prune.formats import ClassClaim
from prune.proofs import ProofFiles, UnlearnOutcome, write_signed_proof
from threat_models.errors import ScenarioError

__all__ = ["Outcome", "write_proof"]


@dataclass(frozen=True, eq=False)
class Outcome:
    """An unlearning outcome as an adversary states it (satisfies
    :class:`prune.proofs.UnlearnOutcome`); :meth:`of` copies the engine's result."""

    patched_model: bytes
    claims: Sequence[Claim | CalibratedClaim]
    method: Mapping[str, Any]
    summary: Mapping[str, Any]
    forget_x: NDArray[np.float32]
    forget_y: NDArray[np.int64]
    notes: Mapping[str, Any] = field(default_factory=dict)
    duals: NDArray[np.float32] | None = None
    """The region certificate of the certified claims (copied from the engine's result)."""
    class_claim: ClassClaim | None = None
    """The class-suppression claim of a class deletion (copied from the engine's result)."""

    @classmethod
    def of(cls, result: UnlearnOutcome) -> Outcome:
        return cls(
            patched_model=result.patched_model,
            claims=tuple(result.claims),
            method=dict(result.method),
            summary=dict(result.summary),
            forget_x=np.asarray(result.forget_x, dtype=np.float32),
            forget_y=np.asarray(result.forget_y, dtype=np.int64),
            duals=getattr(result, "duals", None),
            class_claim=getattr(result, "class_claim", None),
        )

    def but(self, **changes: Any) -> Outcome:
        """A copy with some fields changed."""
        return replace(self, **changes)


def write_proof(
    folder: Path,
    *,
    result: UnlearnOutcome,
    original: bytes,
    key: Path,
    created: datetime,
) -> ProofFiles:
    """Write a complete signed proof folder for ``result`` (a fresh folder; built in a temporary
    sibling and renamed at the end, so nothing half-written is left on failure)."""
    if folder.exists():
        raise ScenarioError(f"proof folder {folder} already exists")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        (staging / "model.onnx").write_bytes(result.patched_model)
        doc = {**result.summary, "method": dict(result.method)}  # as prune unlearn writes it
        summary = json.dumps(doc, indent=2, sort_keys=True, default=_plain)
        (staging / "summary.json").write_text(summary + "\n")
        files = write_signed_proof(
            staging, result=result, original_model=original, key_path=key, now=created
        )
        staging.rename(folder)
    except PruneError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ScenarioError(f"cannot write the proof {folder.name}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace(
        files,
        folder=folder,
        certificate=folder / files.certificate.name,
        signature=folder / files.signature.name,
        forget=folder / files.forget.name,
        receipts=tuple(folder / "receipts" / r.name for r in files.receipts),
    )


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} into summary.json")
