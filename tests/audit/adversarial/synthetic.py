"""An honest proof built by hand, independent of the patch engine: a small scikit-learn MLP on
digits exported to ONNX, one activation-gated constant patch per forget region written exactly as
docs/FORMATS.md describes, and the owner's real signing code (``prune.proofs``).

The claims are honest by construction: the constant patch adds ``M`` to the target logit, with
``M`` chosen from interval bounds of the logits over the whole input box ``[0, 1]^d``, so the
certified margin holds on every point of the box (a fortiori on the region). The builders take
options so that adversarial fixtures can produce *signed but dishonest* variants with the same
code (see :mod:`tests.audit.adversarial.tampers`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from prune.claims import Claim

__all__ = [
    "Mlp",
    "Outcome",
    "PatchSpec",
    "fit_mlp",
    "interval_logits",
    "mlp_from_onnx",
    "mlp_onnx",
    "patched_onnx",
]

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Mlp:
    """``weights[l]`` is ``[out, in]`` float32; ReLU between layers."""

    weights: tuple[F32, ...]
    biases: tuple[F32, ...]

    def forward(self, x: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(hidden pre-activations concatenated, logits) in float64."""
        value = np.asarray(x, dtype=np.float64)
        hidden = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            value = value @ w.T.astype(np.float64) + b
            if i < len(self.weights) - 1:
                hidden.append(value)
                value = np.maximum(value, 0.0)
        return np.concatenate(hidden, axis=1), value


def fit_mlp(x: F32, y: NDArray[np.int64], *, hidden: Sequence[int], seed: int) -> Mlp:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=tuple(hidden), max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return Mlp(
        weights=tuple(np.ascontiguousarray(w.T, dtype=np.float32) for w in clf.coefs_),
        biases=tuple(np.asarray(b, dtype=np.float32) for b in clf.intercepts_),
    )


def interval_logits(
    mlp: Mlp, low: float, high: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Interval bounds ``(L, U)`` of every logit over the box ``[low, high]^d``."""
    d = mlp.weights[0].shape[1]
    lo, hi = np.full(d, low), np.full(d, high)
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        w64 = w.astype(np.float64)
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        centre, spread = w64 @ mid + b, np.abs(w64) @ rad
        lo, hi = centre - spread, centre + spread
        if i < len(mlp.weights) - 1:
            lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
    return lo, hi


def mlp_from_onnx(proto: onnx.ModelProto) -> tuple[Mlp, tuple[str, ...]]:
    """The weights of a plain Gemm/Relu chain (what ``prune train --arch mlp`` exports) and the
    names of its Relu inputs."""
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    weights, biases, hidden = [], [], []
    for node in proto.graph.node:
        if node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            w = consts[node.input[1]]
            weights.append(np.ascontiguousarray(w if trans_b else w.T, dtype=np.float32))
            biases.append(np.asarray(consts[node.input[2]], dtype=np.float32))
        elif node.op_type == "Relu":
            hidden.append(node.input[0])
    return Mlp(tuple(weights), tuple(biases)), tuple(hidden)


def _init(name: str, value: NDArray[Any]) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def mlp_onnx(mlp: Mlp) -> onnx.ModelProto:
    """``input`` ``[batch, d]`` -> Gemm/Relu chain -> ``logits``, opset 17."""
    nodes, inits = [], []
    current = "input"
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        inits += [_init(f"{i}.weight", w), _init(f"{i}.bias", b)]
        out = "logits" if i == len(mlp.weights) - 1 else f"/{i}/Gemm_output_0"
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"{i}.weight", f"{i}.bias"], [out], name=f"/{i}/Gemm", transB=1
            )
        )
        current = out
        if i < len(mlp.weights) - 1:
            nodes.append(
                helper.make_node("Relu", [out], [f"/{i}/Relu_output_0"], name=f"/{i}/Relu")
            )
            current = f"/{i}/Relu_output_0"
    d, classes = mlp.weights[0].shape[1], mlp.weights[-1].shape[0]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@dataclass(frozen=True)
class PatchSpec:
    """The patch parameters of docs/FORMATS.md (activation gate): ``pos``/``neg`` ``[H, P]``,
    ``d`` ``[P, O]``, ``K`` ``[P]``, constant patches (no ``C``) unless ``C`` is given."""

    pos: NDArray[np.float64]
    neg: NDArray[np.float64]
    d: NDArray[np.float64]
    K: NDArray[np.float64]
    n: float
    C: NDArray[np.float64] | None = None
    extra_nodes: tuple[onnx.NodeProto, ...] = ()
    extra_outputs: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


def patched_onnx(
    original: onnx.ModelProto, spec: PatchSpec, *, hidden: Sequence[str]
) -> onnx.ModelProto:
    """The original graph unchanged plus the canonical activation-gated patch subgraph of
    docs/FORMATS.md (the same node sequence ``prune.export`` writes), then ``extra_nodes``."""
    from audit.verify._canonical import CanonicalGraph, canonical_patch
    from audit.verify._canonical import PatchSpec as Canonical
    from audit.verify._graph import Head

    model = onnx.ModelProto()
    model.CopyFrom(original)
    graph = model.graph
    p = "prune/patch/"
    classes = spec.d.shape[1]
    d32, k32 = spec.d.astype(np.float32), spec.K.astype(np.float32)[:, None]
    canonical: CanonicalGraph = canonical_patch(
        Canonical(
            head=Head("input", "input", tuple(hidden), "logits", ()),
            gate="activation",
            patches=spec.d.shape[0],
            classes=classes,
            hidden=spec.pos.shape[0],
            cut_dim=int(original.graph.input[0].type.tensor_type.shape.dim[1].dim_value),
            affine=spec.C is not None,
            linear=spec.C is None and bool(np.all((d32 == 0) | (np.abs(d32) == k32))),
        )
    )
    values = {
        "n": np.array(spec.n),
        "K": spec.K.reshape(-1, 1),
        "d": spec.d,
        "pos": spec.pos,
        "neg": spec.neg,
    }
    if spec.C is not None:
        values["C"] = spec.C
    for name, (_, fixed) in canonical.initializers.items():
        value = fixed if fixed is not None else values[name[len(p) :]]
        graph.initializer.append(_init(name, value))
    nodes = [*canonical.nodes, *spec.extra_nodes]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info("prune/output", TensorProto.FLOAT, ["batch", classes])
    )
    for name in spec.extra_outputs:
        graph.output.append(onnx.ValueInfoProto(name=name))
    meta = {
        "prune.format": "prune/patch/v1",
        "prune.gate": "activation",
        "prune.cut": "input",
        "prune.original_output": "logits",
        "prune.hidden": ",".join(hidden),
        **spec.metadata,
    }
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    return model


@dataclass(frozen=True)
class Outcome:
    """Satisfies ``prune.proofs.UnlearnOutcome``."""

    patched_model: bytes
    claims: Sequence[Claim]
    method: Mapping[str, Any]
    summary: Mapping[str, Any]
    forget_x: F32
    forget_y: NDArray[np.int64]
    duals: NDArray[np.float32] | None = None


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
