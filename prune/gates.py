"""Support ("gate") networks: ``g_u(x) in [0, 1]``, 1 on patch u's region, 0 outside its band.

Three constructions, in the registry ``GATES`` (docs/FORMATS.md, "Patched ONNX" and "Routed
gate", is the contract):

* ``activation`` (default): total violation of the region's sign constraints measured on the
  *real* hidden pre-activations, ``V_u = sum_k pos[k,u] ReLU(-z_k) + neg[k,u] ReLU(z_k)``,
  ``g_u = ReLU(1 - n V_u)``. All patches are two MatMuls on ``z``. Exactness: on the input box,
  ``V_u(x) = 0`` iff the pattern of ``x`` is patch u's (ties ``z_k = 0`` count as active, as in
  the pattern), which is the paper's region ``S_u``.
* ``dense`` (the paper's support network): per patch the ``H`` linearised constraint rows
  ``a_i x <= b_i`` of the region, ``s_i = b_i - a_i x``,
  ``g_u = ReLU(sum_i [ReLU(n s_i + 1) - ReLU(n s_i)] - H + 1)``. Memory ``P * H * d``.
  Each bracket is evaluated as ``ReLU(1 - ReLU(-n s_i))``, the same function (``clamp(n s_i + 1,
  0, 1)``) without the float32 cancellation of the difference form: for ``|n s_i|`` in the
  thousands, ``ReLU(n s + 1) - ReLU(n s)`` rounds to ``1 +- 1e-3``, which summed over ``H``
  rows leaks the patch outside its band (measured) or dims it inside.

* ``routed``: the activation gate of *one* candidate patch per input. A decision tree over the
  sign bits of ``z`` (:mod:`prune._routing`) picks the candidate ``r(x)``, whose packed pattern
  is gathered and confirmed: ``g_{r(x)} = ReLU(1 - n V_{r(x)})``, every other ``g_u = 0``. Cost
  per input ``O(depth + H + O)``, independent of ``P`` apart from the ``log P`` depth. On
  ``S_u`` the route is ``u`` (the tree's invariant), so ``g_u = 1`` there and every other patch
  is 0 (no neighbour-band term); everywhere ``g^routed_u <= g^activation_u``, so its supports
  lie inside the activation gate's bands. The function is discontinuous where the route
  changes (on split neurons' ``z_k = 0``), which is why its graph is checked node for node
  against the canonical form rather than by the piecewise-linear op rules.

``auto`` (:func:`resolve_gate`, the pipeline's default) picks the routed gate from
:data:`ROUTED_FROM` patches on and the activation gate below, by the measured serving cost.

The activation and dense gates are 1 exactly on ``S_u`` (the linearised polytope *is* the pattern region) and 0 far from
it. Outside ``S_u`` walk the layers from the first one: at the first layer where the pattern of
``x`` differs from ``u``'s, the linearised rows equal the real pre-activations, so both gates see
the same violated constraints with the same values, and either gate is 0 once one of them is
violated by more than ``1/n``. Deeper layers differ: the dense gate measures the region's
*linearised* rows, the activation gate the network's real pre-activations, so neither band
contains the other in general. Where only the last hidden layer differs (all rows then coincide),
``activation <= dense`` because it sums violations instead of clamping each at ``1/n``.

All of this is exact arithmetic. The dense rows are stored in float32 (ONNX initializers), so the
executed dense gate is the exact one moved by at most ``n sum_i |e_i(x)|``, ``e_i`` the rounding of
row i's slack ``b_i - a_i x``; first-layer rows are the float32 weights themselves (``e_i = 0``),
deeper rows are rounded products. With a single violated row the two gates are *equal* in exact
arithmetic, so that rounding alone decides which is larger: ``activation <= dense`` holds for the
executed gates only up to it (tests/prune/test_gates.py has a fixed-weight model where it flips).

Threat note: a gate only *locates* the patch; the guarantee that the patch is 0 off the band
(``|p_u| <= K_u`` on the box) comes from the patch network in :mod:`prune.patched`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from prune._routing import (
    DEFAULT_WIDTH,
    BinaryTree,
    RoutingTree,
    build_binary_tree,
    build_tree,
    pack_patterns,
    unpack_patterns,
)
from prune.errors import PatchError
from prune.model import PLHead
from prune.regions import InputBox, linearize

__all__ = [
    "AUTO",
    "GATES",
    "ActivationGate",
    "DenseGate",
    "Gate",
    "NodeSink",
    "RoutedGate",
    "make_gate",
    "resolve_gate",
    "sign_table",
]

F32 = NDArray[np.float32]
Params = dict[str, NDArray[Any]]


class NodeSink(Protocol):
    """Where a gate writes its ONNX form (implemented by :mod:`prune.export`). ``node`` returns
    the (prefixed) output name; ``const`` adds a ``prune/patch/`` initializer."""

    def node(self, op: str, inputs: list[str], *, name: str, **attrs: Any) -> str: ...

    def const(self, name: str, value: NDArray[np.generic]) -> str: ...


class Gate(Protocol):
    name: ClassVar[str]

    def parameters(self, head: PLHead, active: NDArray[np.bool_], box: InputBox) -> Params:
        """Initializer arrays (keys are the FORMATS.md names without ``prune/patch/``)."""
        ...

    def torch_gate(
        self, x: torch.Tensor, z: torch.Tensor, params: dict[str, torch.Tensor], n: float
    ) -> torch.Tensor:
        """``g [N, P]`` from cut values ``x [N,d]`` and pre-activations ``z [N,H]``."""
        ...

    def onnx_gate(
        self, sink: NodeSink, *, x: str, z: str, n: str, patches: int, hidden: int
    ) -> str:
        """Add the gate's nodes (parameters already added by name); return the ``g`` tensor."""
        ...


@dataclass(frozen=True)
class ActivationGate:
    name: ClassVar[str] = "activation"

    def parameters(self, head: PLHead, active: NDArray[np.bool_], box: InputBox) -> Params:
        pos = np.ascontiguousarray(active.T, dtype=np.float32)
        return {"pos": pos, "neg": np.ascontiguousarray(1.0 - pos, dtype=np.float32)}

    def torch_gate(
        self, x: torch.Tensor, z: torch.Tensor, params: dict[str, torch.Tensor], n: float
    ) -> torch.Tensor:
        violation = torch.relu(-z) @ params["pos"] + torch.relu(z) @ params["neg"]
        return torch.relu(1.0 - violation * n)

    def onnx_gate(
        self, sink: NodeSink, *, x: str, z: str, n: str, patches: int, hidden: int
    ) -> str:
        below = sink.node("Relu", [sink.node("Neg", [z], name="gate/neg_z")], name="gate/below")
        above = sink.node("Relu", [z], name="gate/above")
        v_pos = sink.node("MatMul", [below, "prune/patch/pos"], name="gate/v_pos")
        v_neg = sink.node("MatMul", [above, "prune/patch/neg"], name="gate/v_neg")
        violation = sink.node("Add", [v_pos, v_neg], name="gate/violation")
        scaled = sink.node("Mul", [violation, n], name="gate/scaled")
        one = sink.const("gate/one", np.asarray(1.0, dtype=np.float32))
        return sink.node("Relu", [sink.node("Sub", [one, scaled], name="gate/1-nV")], name="g")


@dataclass(frozen=True)
class DenseGate:
    """``chunk``: patterns linearised at a time while building ``A`` (bounds peak memory)."""

    name: ClassVar[str] = "dense"
    chunk: int = 64
    max_bytes: int = 1_900_000_000

    def parameters(self, head: PLHead, active: NDArray[np.bool_], box: InputBox) -> Params:
        n_patches, n_hidden = active.shape
        size = 4 * n_patches * n_hidden * (head.input_dim + 1)
        if size > self.max_bytes:
            raise PatchError(
                f"the dense gate for {n_patches} patches needs {size / 1e9:.2f} GB of constraint "
                "rows, over the 2 GB ONNX protobuf limit; use --gate activation"
            )
        a = np.empty((head.input_dim, n_patches * n_hidden), dtype=np.float32)
        b = np.empty(n_patches * n_hidden, dtype=np.float32)
        for start in range(0, n_patches, self.chunk):
            stop = min(start + self.chunk, n_patches)
            g, h = linearize(head, active[start:stop], box=box).constraints()
            cols = slice(start * n_hidden, stop * n_hidden)
            a[:, cols] = g.reshape(-1, head.input_dim).T.numpy()
            b[cols] = h.reshape(-1).numpy()
        return {"A": a, "b": b}

    def torch_gate(
        self, x: torch.Tensor, z: torch.Tensor, params: dict[str, torch.Tensor], n: float
    ) -> torch.Tensor:
        slack = (params["b"] - x @ params["A"]) * n
        inside = torch.relu(1.0 - torch.relu(-slack))
        n_hidden = z.shape[1]
        total = inside.reshape(len(x), -1, n_hidden).sum(dim=2)
        return torch.relu(total - float(n_hidden - 1))

    def onnx_gate(
        self, sink: NodeSink, *, x: str, z: str, n: str, patches: int, hidden: int
    ) -> str:
        ax = sink.node("MatMul", [x, "prune/patch/A"], name="gate/ax")
        slack = sink.node("Sub", ["prune/patch/b", ax], name="gate/slack")
        scaled = sink.node("Mul", [slack, n], name="gate/scaled")
        one = sink.const("gate/one", np.asarray(1.0, dtype=np.float32))
        violated = sink.node("Relu", [sink.node("Neg", [scaled], name="gate/-ns")], name="gate/v")
        inside = sink.node(
            "Relu", [sink.node("Sub", [one, violated], name="gate/1-v")], name="gate/inside"
        )
        shape = sink.const("gate/shape", np.asarray([0, patches, hidden], dtype=np.int64))
        per_patch = sink.node("Reshape", [inside, shape], name="gate/per_patch")
        axes = sink.const("gate/axes", np.asarray([2], dtype=np.int64))
        total = sink.node("ReduceSum", [per_patch, axes], name="gate/total", keepdims=0)
        offset = sink.const("gate/h-1", np.asarray(float(hidden - 1), dtype=np.float32))
        return sink.node(
            "Relu", [sink.node("Sub", [total, offset], name="gate/total-h+1")], name="g"
        )


def sign_table() -> F32:
    """``[256, 8]``: row ``v`` holds ``1 - 2 bit_j(v)`` for the bits of byte ``v``, least
    significant first: ``-1`` for an active neuron, ``+1`` for an inactive one. The routed gate
    unpacks a stored pattern with one Gather in this table, and ``ReLU(sign_k z_k)`` is then
    exactly the activation gate's violation term of neuron ``k``."""
    values = np.arange(256, dtype=np.uint8)[:, None]
    bits = np.unpackbits(values, axis=1, bitorder="little").astype(np.float32)
    return np.asarray(1.0 - 2.0 * bits, dtype=np.float32)


def routing_tree(params: Params) -> RoutingTree:
    """The tree held in the routed gate's parameters; its depth is the number of levels until
    every node reachable from the root is a leaf (at least 1)."""
    split = np.asarray(params["route/split"], dtype=np.int32)
    child = np.asarray(params["route/child"], dtype=np.int32).reshape(len(split), -1)
    leaf = np.asarray(params["route/leaf"], dtype=np.int32)
    depth, reach = 0, np.zeros(1, dtype=np.int64)
    while not (child[reach] == reach[:, None]).all():
        reach = np.unique(child[reach])
        depth += 1
    return RoutingTree(split=split, child=child, leaf=leaf, depth=max(depth, 1))


@dataclass(frozen=True)
class RoutedGate:
    """The routed gate (module docstring; docs/FORMATS.md "Routed gate"). Patch parameters
    ``d [P,O]``, ``K [P,1]`` and (affine patches) ``C [P,d,O]`` are gathered per input.
    ``width``: neurons tested per tree node."""

    name: ClassVar[str] = "routed"
    width: int = DEFAULT_WIDTH

    def parameters(self, head: PLHead, active: NDArray[np.bool_], box: InputBox) -> Params:
        if head.n_hidden == 0:
            raise PatchError("the routed gate needs hidden neurons to route on; use --gate dense")
        tree = build_tree(active, width=self.width)
        return {
            "route/patterns": pack_patterns(active),
            "route/split": tree.split,
            "route/child": tree.child.reshape(-1),
            "route/leaf": tree.leaf,
            "route/signs": sign_table(),
        }

    def routes(self, z: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Candidate patch ``[N]`` of each row of ``z``: the tree walked on ``z >= 0``."""
        tree = routing_tree({k: v.numpy() for k, v in params.items() if k.startswith("route/")})
        return torch.from_numpy(tree.route((z >= 0).numpy()).astype(np.int64))

    def candidate(
        self, z: torch.Tensor, params: dict[str, torch.Tensor], n: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(patch [N], g [N])``: the routed candidate and its gate value."""
        patch = self.routes(z, params)
        packed = params["route/patterns"][patch].to(torch.int64)
        sign = params["route/signs"][packed].reshape(len(z), -1)[:, : z.shape[1]].to(z.dtype)
        violation = torch.relu(z * sign).sum(dim=1)
        return patch, torch.relu(1.0 - violation * n)

    def torch_gate(
        self, x: torch.Tensor, z: torch.Tensor, params: dict[str, torch.Tensor], n: float
    ) -> torch.Tensor:
        patch, g = self.candidate(z, params, n)
        n_patches = params["route/patterns"].shape[0]
        out = torch.zeros(len(z), n_patches, dtype=z.dtype)
        return out.scatter_(1, patch.view(-1, 1), g.view(-1, 1))

    def onnx_gate(
        self, sink: NodeSink, *, x: str, z: str, n: str, patches: int, hidden: int
    ) -> str:
        raise PatchError("internal: the routed gate is exported by onnx_delta, not onnx_gate")

    def onnx_delta(
        self,
        sink: NodeSink,
        *,
        x: str,
        z: str,
        n: str,
        params: Params,
        linear: bool,
        affine: bool,
        hidden: int,
        classes: int,
    ) -> str:
        """Add the routed gate and the one gathered patch; return ``h`` ``[N, O]``. The node
        list is canonical (docs/FORMATS.md): :mod:`audit.verify._routed` rebuilds it from the
        parameters. Every op is per row; none couples the batch axis."""
        patch, sign, axes1 = self._onnx_route(sink, z=z, params=params, hidden=hidden)
        return _confirm_and_patch(
            sink,
            x=x,
            z=z,
            n=n,
            patch=patch,
            sign=sign,
            axes1=axes1,
            linear=linear,
            affine=affine,
            classes=classes,
        )

    def _onnx_route(
        self, sink: NodeSink, *, z: str, params: Params, hidden: int
    ) -> tuple[str, str, str]:
        """The routing nodes: ``(route/patch [N], route/sign [N, H], route/axes1)``."""
        from onnx import TensorProto

        p = "prune/patch/"
        tree = routing_tree(params)
        i32 = TensorProto.INT32
        zero = sink.const("route/zero", np.asarray(0.0, dtype=np.float32))
        weights = sink.const("route/weights", (1 << np.arange(tree.width)).astype(np.int32))
        codes = sink.const("route/codes", np.asarray(1 << tree.width, dtype=np.int32))
        row = sink.node(
            "Slice",
            [
                p + "route/split",
                sink.const("route/s0", np.asarray([0], np.int64)),
                sink.const("route/s1", np.asarray([1], np.int64)),
            ],
            name="route/root_row",
        )
        axes0 = sink.const("route/axes0", np.asarray([0], np.int64))
        root = sink.node("Squeeze", [row, axes0], name="route/root")
        # only the T tested neurons' signs are computed per level, never all H of them
        z_k = sink.node("Gather", [z, root], name="route/z0", axis=1)
        ge = sink.node("GreaterOrEqual", [z_k, zero], name="route/ge0")
        bits = sink.node("Cast", [ge], name="route/b0", to=i32)
        code = sink.node("MatMul", [bits, weights], name="route/code0")
        node = sink.node("Gather", [p + "route/child", code], name="route/node1", axis=0)
        for level in range(1, tree.depth):
            k = sink.node("Gather", [p + "route/split", node], name=f"route/k{level}", axis=0)
            z_k = sink.node("GatherElements", [z, k], name=f"route/z{level}", axis=1)
            ge = sink.node("GreaterOrEqual", [z_k, zero], name=f"route/ge{level}")
            bits = sink.node("Cast", [ge], name=f"route/b{level}", to=i32)
            code = sink.node("MatMul", [bits, weights], name=f"route/code{level}")
            base = sink.node("Mul", [node, codes], name=f"route/base{level}")
            index = sink.node("Add", [base, code], name=f"route/index{level}")
            node = sink.node(
                "Gather", [p + "route/child", index], name=f"route/node{level + 1}", axis=0
            )
        patch = sink.node("Gather", [p + "route/leaf", node], name="route/patch", axis=0)
        packed = sink.node("Gather", [p + "route/patterns", patch], name="route/packed", axis=0)
        byte = sink.node("Cast", [packed], name="route/bytes", to=i32)
        unpacked = sink.node("Gather", [p + "route/signs", byte], name="route/signs8", axis=0)
        width = 8 * int(np.asarray(params["route/patterns"]).shape[1])
        sign = sink.node(
            "Reshape",
            [unpacked, sink.const("route/flat", np.asarray([0, width], np.int64))],
            name="route/sign" if width == hidden else "route/signs_flat",
        )
        axes1 = sink.const("route/axes1", np.asarray([1], dtype=np.int64))
        if width != hidden:
            sign = sink.node(
                "Slice",
                [
                    sign,
                    sink.const("route/h0", np.asarray([0], np.int64)),
                    sink.const("route/h1", np.asarray([hidden], np.int64)),
                    axes1,
                ],
                name="route/sign",
            )
        return patch, sign, axes1


ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 3
"""The ``tree`` gate's router is ``ai.onnx.ml.TreeEnsembleRegressor``, imported at this version
when the model imports no ``ai.onnx.ml`` opset (versions 1-4 define the op with the attributes
the gate uses; version 5 deprecates it, and such a model is refused the ``tree`` gate)."""


@lru_cache(maxsize=8)
def _binary_tree(packed: bytes, patches: int, hidden: int) -> BinaryTree:
    table = np.frombuffer(packed, dtype=np.uint8).reshape(patches, -1)
    return build_binary_tree(unpack_patterns(table, hidden))


def binary_tree(params: Params, hidden: int) -> BinaryTree:
    """The canonical binary tree of the gate's stored patterns (a function of them alone)."""
    packed = np.ascontiguousarray(params["route/patterns"], dtype=np.uint8)
    return _binary_tree(packed.tobytes(), int(packed.shape[0]), hidden)


def tree_attributes(tree: BinaryTree) -> dict[str, Any]:
    """The ``TreeEnsembleRegressor`` attributes of ``tree`` (docs/FORMATS.md, "Tree gate"): one
    tree, nodes in their breadth-first order, threshold 0 with ``BRANCH_GTE`` (``z >= 0`` goes
    to the true child), each leaf's weight its patch index."""
    leaves = np.flatnonzero(tree.patch >= 0)
    count = len(tree.feature)
    return {
        "aggregate_function": "SUM",
        "n_targets": 1,
        "nodes_falsenodeids": tree.false.tolist(),
        "nodes_featureids": tree.feature.tolist(),
        "nodes_missing_value_tracks_true": [0] * count,
        "nodes_modes": ["LEAF" if leaf >= 0 else "BRANCH_GTE" for leaf in tree.patch.tolist()],
        "nodes_nodeids": list(range(count)),
        "nodes_treeids": [0] * count,
        "nodes_truenodeids": tree.true.tolist(),
        "nodes_values": [0.0] * count,
        "post_transform": "NONE",
        "target_ids": [0] * len(leaves),
        "target_nodeids": leaves.tolist(),
        "target_treeids": [0] * len(leaves),
        "target_weights": [float(tree.patch[m]) for m in leaves],
    }


@dataclass(frozen=True)
class TreeGate(RoutedGate):
    """The routed gate with its router as one ``ai.onnx.ml.TreeEnsembleRegressor`` over ``z``
    (docs/FORMATS.md, "Tree gate"): a binary tree of single-neuron tests walked inside one
    onnxruntime kernel instead of ``8 * depth`` small nodes, and the sign table of all patterns
    unpacked from the packed bytes by nodes on constants only (folded once when a session is
    created). Same gate function as ``routed`` for the same route; the route is the binary
    tree's."""

    name: ClassVar[str] = "tree"

    def parameters(self, head: PLHead, active: NDArray[np.bool_], box: InputBox) -> Params:
        if head.n_hidden == 0:
            raise PatchError("the tree gate needs hidden neurons to route on; use --gate dense")
        if len(active) >= 1 << 24:
            raise PatchError("the tree gate routes at most 2^24 - 1 patches")
        build_binary_tree(active)  # refuses two patches with one pattern
        return {"route/patterns": pack_patterns(active), "route/signs": sign_table()}

    def routes(self, z: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        packed = {"route/patterns": params["route/patterns"].numpy()}
        tree = binary_tree(packed, int(z.shape[1]))
        return torch.from_numpy(tree.route((z >= 0).numpy()).astype(np.int64))

    def _onnx_route(
        self, sink: NodeSink, *, z: str, params: Params, hidden: int
    ) -> tuple[str, str, str]:
        from onnx import TensorProto

        p = "prune/patch/"
        tree = binary_tree(params, hidden)
        axes1 = sink.const("route/axes1", np.asarray([1], dtype=np.int64))
        value = sink.node(
            "TreeEnsembleRegressor",
            [z],
            name="route/tree",
            domain=ML_DOMAIN,
            **tree_attributes(tree),
        )
        index = sink.node("Cast", [value], name="route/index", to=TensorProto.INT64)
        patch = sink.node("Squeeze", [index, axes1], name="route/patch")
        # on constants only: onnxruntime folds the [P, H] sign table once per session
        patches, width = np.asarray(params["route/patterns"]).shape
        byte = sink.node("Cast", [p + "route/patterns"], name="route/bytes", to=TensorProto.INT32)
        unpacked = sink.node("Gather", [p + "route/signs", byte], name="route/signs8", axis=0)
        shape = sink.const("route/flat", np.asarray([patches, 8 * width], np.int64))
        table = sink.node(
            "Reshape",
            [unpacked, shape],
            name="route/table" if 8 * width == hidden else "route/table_flat",
        )
        if 8 * width != hidden:
            table = sink.node(
                "Slice",
                [
                    table,
                    sink.const("route/h0", np.asarray([0], np.int64)),
                    sink.const("route/h1", np.asarray([hidden], np.int64)),
                    axes1,
                ],
                name="route/table",
            )
        sign = sink.node("Gather", [table, patch], name="route/sign", axis=0)
        return patch, sign, axes1


def _confirm_and_patch(
    sink: NodeSink,
    *,
    x: str,
    z: str,
    n: str,
    patch: str,
    sign: str,
    axes1: str,
    linear: bool,
    affine: bool,
    classes: int,
) -> str:
    """The routed candidate's gate ``g = ReLU(1 - n V)`` and patch network ``h`` ``[N, O]``,
    shared by the ``routed`` and ``tree`` gates (docs/FORMATS.md, "Routed gate")."""
    p = "prune/patch/"
    # ReLU(sign_k z_k) is, entry by entry and exactly in floating point (sign_k = +-1),
    # the activation gate's pos*relu(-z) + neg*relu(z): 0 where the sign matches, |z_k| not
    signed = sink.node("Mul", [z, sign], name="gate/signed")
    terms = sink.node("Relu", [signed], name="gate/terms")
    violation = sink.node("ReduceSum", [terms, axes1], name="gate/violation", keepdims=1)
    scaled = sink.node("Mul", [violation, n], name="gate/scaled")
    one = sink.const("gate/one", np.asarray(1.0, dtype=np.float32))
    g = sink.node("Relu", [sink.node("Sub", [one, scaled], name="gate/1-nV")], name="g")
    d_u = sink.node("Gather", [p + "d", patch], name="route/d", axis=0)
    if linear:
        return sink.node("Mul", [g, d_u], name="h_sum")
    k_u = sink.node("Gather", [p + "K", patch], name="route/K", axis=0)
    kg = sink.node("Mul", [k_u, g], name="Kg")
    shift = sink.node("Sub", [kg, k_u], name="Kg-K")
    if affine:
        c_u = sink.node("Gather", [p + "C", patch], name="route/C", axis=0)
        x3 = sink.node("Unsqueeze", [x, axes1], name="route/x3")
        xc3 = sink.node("MatMul", [x3, c_u], name="route/xC3")
        xc = sink.node(
            "Reshape",
            [xc3, sink.const("route/o", np.asarray([0, classes], np.int64))],
            name="xC",
        )
        d_u = sink.node("Add", [xc, d_u], name="p")
    up = sink.node("Relu", [sink.node("Add", [d_u, shift], name="p+s")], name="h_up")
    neg_p = sink.node("Neg", [d_u], name="-p")
    down = sink.node("Relu", [sink.node("Add", [neg_p, shift], name="-p+s")], name="h_down")
    return sink.node("Sub", [up, down], name="h_sum")


GATES: dict[str, type[ActivationGate] | type[DenseGate] | type[RoutedGate]] = {
    ActivationGate.name: ActivationGate,
    DenseGate.name: DenseGate,
    RoutedGate.name: RoutedGate,
    TreeGate.name: TreeGate,
}


ROUTED_GATES = frozenset({RoutedGate.name, TreeGate.name})
"""Gates that route each input to one candidate patch (``C`` is then stored ``[P, d, O]``)."""

AUTO = "auto"
ROUTED_FROM = 64
"""``auto`` picks the tree gate from this many patches on, the activation gate below: the
activation gate's cost grows with ``P`` (x1.2 of the original at 1-10 patches, x1.6 at 100,
x70 at 1000 on Fashion-MNIST, batch 256), the routed gates' does not; the tree gate's router is
one kernel where the routed gate's is ``8 * depth`` small nodes; docs/BENCHMARKS.md, "Serving
cost and speed"."""


def ml_opset(proto: Any) -> int | None:
    """The model's ``ai.onnx.ml`` opset version, ``None`` when it imports none."""
    versions = [int(e.version) for e in proto.opset_import if e.domain == ML_DOMAIN]
    return versions[0] if versions else None


def tree_refusal(proto: Any) -> str | None:
    """Why the ``tree`` gate cannot serve this model (``None``: it can)."""
    version = ml_opset(proto)
    if version is not None and version >= 5:
        return (
            f"the model imports {ML_DOMAIN} opset {version}, where TreeEnsembleRegressor is "
            "deprecated: use --gate routed"
        )
    return None


def resolve_gate(name: str, patches: int, proto: Any = None) -> str:
    """The gate ``name`` stands for with ``patches`` patches (``auto`` -> a registered gate):
    the tree gate from :data:`ROUTED_FROM` patches on (the routed gate for a model ``proto``
    that the tree gate cannot serve), the activation gate below."""
    if name != AUTO:
        return name
    if patches < ROUTED_FROM:
        return ActivationGate.name
    if proto is not None and tree_refusal(proto):
        return RoutedGate.name
    return TreeGate.name


def make_gate(name: str) -> Gate:
    try:
        return GATES[name]()
    except KeyError:
        raise PatchError(f"unknown gate {name!r} (choose {', '.join(GATES)})") from None
