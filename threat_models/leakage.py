"""Patch leakage (threat 11): how well a curious party singles out, from a pool of candidate
records, those whose deletion was requested, given only the served patched model.

* **White-box** (:func:`white_box`): the party reads the patch parameters from the ONNX file
  (docs/FORMATS.md: the gate rows ``pos``/``neg`` or ``A``/``b``, the sharpness ``n``), runs
  the original subgraph contained in the patched model to get each pool record's hidden
  pre-activations, evaluates every gate, and flags a record when it lies inside a patched
  region (gate = 1) that holds no other pool record: the region *is* that record.
* **Black-box** (:func:`black_box`): the party trains its own reference model on labelled public
  data and flags pool records on which the served model's prediction differs from it.

Scores, for a pool that contains every requester: ``recall`` = share of requesters flagged,
``precision`` = share of flagged records that are requesters, and **linkability** =
``recall * precision``: the probability that a given requester is flagged *and* that a flagged
record named as "a requester" is right. Without decoys a deleted record is a requester, so
white-box linkability is the share of forgotten records singled out; with ``K`` decoys per
request (:mod:`prune.privacy`) precision, hence linkability, falls to about ``1/(1+K)``."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from prune.model import OrtRunner
from threat_models.errors import ThreatModelError

__all__ = ["Linkability", "black_box", "patched_regions", "white_box"]

_PREFIX = "prune/patch/"
_OUTPUT = "prune/output"


@dataclass(frozen=True)
class Linkability:
    """Counts behind one measurement (see the module docstring for the scores)."""

    attack: Literal["white-box", "black-box"]
    pool: int
    requesters: int
    deleted: int
    flagged: int
    requesters_flagged: int
    deleted_flagged: int

    @property
    def recall(self) -> float:
        return self.requesters_flagged / self.requesters if self.requesters else 0.0

    @property
    def precision(self) -> float:
        return self.requesters_flagged / self.flagged if self.flagged else 0.0

    @property
    def linkability(self) -> float:
        return self.recall * self.precision

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "recall": self.recall,
            "precision": self.precision,
            "linkability": self.linkability,
        }


def _parameters(proto: Any) -> dict[str, NDArray[np.float64]]:
    from onnx import numpy_helper

    return {
        t.name[len(_PREFIX) :]: numpy_helper.to_array(t).astype(np.float64)
        for t in proto.graph.initializer
        if t.name.startswith(_PREFIX)
    }


def patched_regions(patched: bytes, pool_x: NDArray[np.float32]) -> NDArray[np.float64]:
    """Gate values ``g [N, P]`` of every pool record for every patch, computed from the public
    format alone: 1 inside the patch's region, 0 outside its ``1/n`` band."""
    import onnx

    proto = onnx.load_from_string(patched)
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("prune.format") != "prune/patch/v1":
        raise ThreatModelError("not a prune/patch/v1 model: nothing to read the regions from")
    cut = meta["prune.cut"]
    is_input = cut == proto.graph.input[0].name
    # the gate's own unit values (FORMATS.md canonical step 1: the hidden tensors flattened,
    # a Clip unit minus its bound, concatenated), read from the served graph itself
    outs = OrtRunner(patched, outputs=[_PREFIX + "z", *([] if is_input else [cut])]).run(pool_x)
    z = outs[0].reshape(len(pool_x), -1)
    x = pool_x if is_input else outs[-1]
    x = x.reshape(len(pool_x), -1).astype(np.float64)
    z = z.astype(np.float64)
    p = _parameters(proto)
    n = float(p["n"])
    if meta.get("prune.gate") == "activation":
        violation = np.maximum(-z, 0.0) @ p["pos"] + np.maximum(z, 0.0) @ p["neg"]
        return np.asarray(np.maximum(1.0 - n * violation, 0.0))
    patches = p["d"].shape[0]
    width = p["b"].shape[0] // patches
    out = np.empty((len(x), patches))
    for start in range(0, len(x), 256):
        s = (p["b"] - x[start : start + 256] @ p["A"]) * n
        inner = (np.maximum(s + 1.0, 0.0) - np.maximum(s, 0.0)).reshape(len(s), patches, width)
        out[start : start + 256] = np.maximum(inner.sum(axis=2) - width + 1.0, 0.0)
    return out


def _score(
    attack: Literal["white-box", "black-box"],
    flagged: NDArray[np.bool_],
    requester: NDArray[np.bool_],
    deleted: NDArray[np.bool_],
) -> Linkability:
    if not (requester <= deleted).all():
        raise ThreatModelError("every requester must be among the deleted records")
    if not requester.any():
        raise ThreatModelError("the pool holds no requester: linkability is undefined")
    return Linkability(
        attack=attack,
        pool=len(flagged),
        requesters=int(requester.sum()),
        deleted=int(deleted.sum()),
        flagged=int(flagged.sum()),
        requesters_flagged=int((flagged & requester).sum()),
        deleted_flagged=int((flagged & deleted).sum()),
    )


def white_box(
    patched: bytes,
    pool_x: NDArray[np.float32],
    *,
    requester: NDArray[np.bool_],
    deleted: NDArray[np.bool_],
) -> Linkability:
    """Flag pool records alone inside a patched region (see the module docstring)."""
    inside = patched_regions(patched, pool_x) >= 1.0
    alone = inside & (inside.sum(axis=0, keepdims=True) == 1)
    return _score("white-box", alone.any(axis=1), requester, deleted)


def black_box(
    patched: bytes,
    pool_x: NDArray[np.float32],
    *,
    requester: NDArray[np.bool_],
    deleted: NDArray[np.bool_],
    public: tuple[NDArray[np.float32], NDArray[np.int64]],
    seed: int,
) -> Linkability:
    """Flag pool records on which the served model disagrees with a reference model the party
    trains itself (scikit-learn MLP, one hidden layer of 64) on ``public`` labelled data."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    px, py = public
    reference = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference.fit(px.reshape(len(px), -1), py)
    theirs = reference.predict(pool_x.reshape(len(pool_x), -1))
    served = OrtRunner(patched, outputs=[_OUTPUT]).run(pool_x)[0].argmax(axis=1)
    return _score("black-box", np.asarray(served != theirs), requester, deleted)
