"""The patch parameters read from the patched model, and a plain numpy evaluation of the formula
in docs/FORMATS.md ("Patched ONNX") that the verifier compares with what onnxruntime computes.

The evaluation is float64 and deliberately naive (one einsum per term): it is the reference that
the ONNX patch subgraph must agree with. Column layout: patch ``u`` owns columns
``u*O .. u*O+O-1`` of ``C`` and ``u*H .. u*H+H-1`` of ``A`` / ``b`` (patch-major); the routed
gate gathers ``C`` per input and stores it ``[P, d, O]``. Its packed patterns are unpacked into
``pos``/``neg`` so that the region and locality checks read them as they read the activation
gate's (the routed gate is the activation gate of the one routed candidate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from audit.verify._framework import CheckUnavailable
from audit.verify._graph import PATCH_PREFIX
from audit.verify._routed import Routing, read_routing
from audit.verify._tree import TreeRouting, read_tree_routing

__all__ = ["ROUTED_GATES", "Gate", "PatchParams", "read_patch"]

Gate = Literal["activation", "dense", "routed", "tree"]
ROUTED_GATES = frozenset({"routed", "tree"})
"""Gates that route each input to one candidate patch: the activation gate of that candidate
(its packed patterns unpacked into ``pos``/``neg``), ``C`` stored ``[P, d, O]``."""
F64 = NDArray[np.float64]
_NAMES = {"n", "K", "d", "C", "pos", "neg", "A", "b"}
_GATE_NAMES: dict[str, set[str]] = {
    "activation": {"pos", "neg"},
    "dense": {"A", "b"},
    "routed": set(),
    "tree": set(),
}


@dataclass(frozen=True, eq=False)
class PatchParams:
    """``P`` patches over ``O`` classes; ``C`` is ``None`` for constant patches. Activation gates
    carry ``pos``/``neg`` ``[H, P]``, dense gates ``A`` ``[d, P*H]`` and ``b`` ``[P*H]``."""

    gate: Gate
    n: float
    K: F64
    d: F64
    C: F64 | None
    pos: F64 | None = None
    neg: F64 | None = None
    A: F64 | None = None
    b: F64 | None = None
    routing: Routing | TreeRouting | None = None

    @property
    def routed(self) -> bool:
        return self.gate in ROUTED_GATES

    @property
    def patches(self) -> int:
        return int(self.d.shape[0])

    @property
    def classes(self) -> int:
        return int(self.d.shape[1])

    def columns(self) -> F64 | None:
        """The linear parts of all patches as ``[d, P, O]`` (``C_u = columns()[:, u, :]``),
        whichever layout the gate stores (routed: ``[P, d, O]``, gathered per input; otherwise
        ``[d, P*O]``, patch-major); ``None`` for constant patches."""
        if self.C is None:
            return None
        if self.routed:
            return np.asarray(self.C.transpose(1, 0, 2))
        return np.asarray(self.C.reshape(self.C.shape[0], self.patches, self.classes))

    def check_dims(self, *, cut_dim: int, hidden: int, classes: int) -> list[str]:
        """Shape problems against the dimensions the verifier measured on the original model."""
        problems: list[str] = []
        p = self.patches
        if self.classes != classes:
            problems.append(f"patch d has {self.classes} classes, the model has {classes}")
        if self.routed and self.C is not None:
            if self.C.shape != (p, cut_dim, classes):
                problems.append(
                    f"patch C has shape {self.C.shape}, expected ({p}, {cut_dim}, {classes})"
                )
        elif self.C is not None and self.C.shape != (cut_dim, p * classes):
            problems.append(
                f"patch C has shape {self.C.shape}, expected ({cut_dim}, {p * classes})"
            )
        for name in ("pos", "neg"):
            value = getattr(self, name)
            if value is not None and value.shape != (hidden, p):
                problems.append(f"patch {name} has shape {value.shape}, expected ({hidden}, {p})")
        if self.A is not None and self.A.shape != (cut_dim, p * hidden):
            problems.append(f"patch A has shape {self.A.shape}, expected ({cut_dim}, {p * hidden})")
        if self.b is not None and self.b.shape != (p * hidden,):
            problems.append(f"patch b has shape {self.b.shape}, expected ({p * hidden},)")
        return problems

    def gates(self, *, z: F64, x: F64) -> F64:
        """Gate values ``g`` ``[N, P]`` in [0, 1] from the hidden pre-activations ``z`` ``[N, H]``
        (activation and routed gates) or the cut ``x`` ``[N, d]`` (dense gate). Routed: the
        activation gate of the routed candidate, 0 for every other patch."""
        if self.routed:
            assert self.pos is not None and self.routing is not None
            patch = self.routing.route(z)
            own = self.pos[:, patch].T  # [N, H]
            v = (own * np.maximum(-z, 0.0) + (1.0 - own) * np.maximum(z, 0.0)).sum(axis=1)
            out = np.zeros((len(z), self.patches))
            out[np.arange(len(z)), patch] = np.maximum(1.0 - self.n * v, 0.0)
            return out
        if self.gate == "activation":
            assert self.pos is not None and self.neg is not None
            violation = np.maximum(-z, 0.0) @ self.pos + np.maximum(z, 0.0) @ self.neg
            return np.asarray(np.maximum(1.0 - self.n * violation, 0.0))
        assert self.A is not None and self.b is not None
        hidden = self.b.shape[0] // self.patches
        out = np.empty((len(x), self.patches))
        for start in range(0, len(x), 256):
            s = self.b - x[start : start + 256] @ self.A
            s = s.reshape(len(s), self.patches, hidden) * self.n
            inner = (np.maximum(s + 1.0, 0.0) - np.maximum(s, 0.0)).sum(axis=2)
            out[start : start + 256] = np.maximum(inner - hidden + 1.0, 0.0)
        return out

    def violation(self, z: NDArray[np.floating[Any]]) -> NDArray[np.floating[Any]]:
        """Activation and routed gates: the total sign violation ``V`` ``[N, P]`` of every
        patch (0 on the region), in the precision of ``z``. For the routed gate this bounds
        the gate from above (a patch not routed to is 0 whatever ``V``)."""
        assert self.pos is not None and self.neg is not None
        pos, neg = self.pos.astype(z.dtype), self.neg.astype(z.dtype)
        return np.asarray(np.maximum(-z, 0) @ pos + np.maximum(z, 0) @ neg)

    def delta(self, *, x: F64, g: F64) -> F64:
        """``sum_u h_u(x)`` ``[N, O]``: what the patch adds to the original logits."""
        p = np.broadcast_to(self.d, (len(x), *self.d.shape)).copy()
        if self.C is not None and self.routed:
            p += np.einsum("nd,pdo->npo", x, self.C)
        elif self.C is not None:
            p += (x @ self.C).reshape(len(x), self.patches, self.classes)
        k = self.K.reshape(1, -1, 1)
        kg = k * g[:, :, None] - k
        return np.asarray((np.maximum(p + kg, 0.0) - np.maximum(-p + kg, 0.0)).sum(axis=1))


def _array(tensor: Any) -> F64:
    from onnx import TensorProto, numpy_helper

    if tensor.data_type != TensorProto.FLOAT:
        raise CheckUnavailable(f"patch parameter {tensor.name!r} is not float32")
    try:
        value = numpy_helper.to_array(tensor).astype(np.float64)
    except Exception as exc:  # a corrupt tensor
        raise CheckUnavailable(f"patch parameter {tensor.name!r} cannot be read") from exc
    if not np.isfinite(value).all():
        raise CheckUnavailable(f"patch parameter {tensor.name!r} has NaN or infinity")
    return value


def read_patch(patched: Any, *, gate: str, hidden: int | None = None) -> PatchParams:
    """The ``prune/patch/*`` parameters of ``patched``; exactly the set the gate needs. The
    routed gate needs ``hidden`` (the head's width, measured by the verifier) and has its
    routing checked here (:func:`audit.verify._routed.read_routing`)."""
    found: dict[str, F64] = {}
    for tensor in patched.graph.initializer:
        if tensor.name.startswith(PATCH_PREFIX):
            short = tensor.name[len(PATCH_PREFIX) :]
            if short in _NAMES:
                found[short] = _array(tensor)
    if gate not in _GATE_NAMES:
        raise CheckUnavailable(
            f"unknown gate {gate[:30]!r} (expected activation, dense, routed or tree)"
        )
    expected = {"n", "K", "d"} | _GATE_NAMES[gate]
    missing = expected - set(found)
    if missing:
        raise CheckUnavailable(f"patch parameter {', '.join(sorted(missing))} missing")
    stray = set(found) - expected - {"C"}
    if stray:
        raise CheckUnavailable(
            f"patch parameter {', '.join(sorted(stray))} does not fit gate {gate}"
        )
    n, K, d = found["n"], found["K"], found["d"]
    if n.shape != () or not n > 0:
        raise CheckUnavailable(f"patch n must be a positive scalar, got shape {n.shape}")
    if d.ndim != 2 or d.shape[0] < 1 or K.shape != (d.shape[0], 1) or (K < 0).any():
        raise CheckUnavailable(
            f"patch d {d.shape} and K {K.shape} do not fit [P, O] and [P, 1] >= 0"
        )
    kind: Gate = "activation" if gate == "activation" else "dense"
    if gate in ROUTED_GATES:
        if hidden is None:
            raise CheckUnavailable(f"{gate} gate: the head's hidden width is unknown")
        read = read_routing if gate == "routed" else read_tree_routing
        routing = read(patched, patches=d.shape[0], hidden=hidden)
        pos = routing.patterns.T.astype(np.float64)
        return PatchParams(
            gate="routed" if gate == "routed" else "tree",
            n=float(n),
            K=K.reshape(-1),
            d=d,
            C=found.get("C"),
            pos=pos,
            neg=1.0 - pos,
            routing=routing,
        )
    params = PatchParams(
        gate=kind,
        n=float(n),
        K=K.reshape(-1),
        d=d,
        C=found.get("C"),
        pos=found.get("pos"),
        neg=found.get("neg"),
        A=found.get("A"),
        b=found.get("b"),
    )
    for name in ("pos", "neg"):
        value = getattr(params, name)
        if value is not None and not np.isin(value, (0.0, 1.0)).all():
            raise CheckUnavailable(f"patch {name} must hold only 0 and 1")
    return params
