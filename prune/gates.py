"""Support ("gate") networks: ``g_u(x) in [0, 1]``, 1 on patch u's region, 0 outside its band.

Two constructions, in the registry ``GATES`` (docs/FORMATS.md, "Patched ONNX", is the contract):

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

Both are 1 exactly on ``S_u`` (the linearised polytope *is* the pattern region) and 0 far from
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
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from prune.errors import PatchError
from prune.model import PLHead
from prune.regions import InputBox, linearize

__all__ = ["GATES", "ActivationGate", "DenseGate", "Gate", "NodeSink", "make_gate"]

F32 = NDArray[np.float32]


class NodeSink(Protocol):
    """Where a gate writes its ONNX form (implemented by :mod:`prune.export`). ``node`` returns
    the (prefixed) output name; ``const`` adds a ``prune/patch/`` initializer."""

    def node(self, op: str, inputs: list[str], *, name: str, **attrs: Any) -> str: ...

    def const(self, name: str, value: NDArray[np.generic]) -> str: ...


class Gate(Protocol):
    name: ClassVar[str]

    def parameters(self, head: PLHead, active: NDArray[np.bool_], box: InputBox) -> dict[str, F32]:
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

    def parameters(self, head: PLHead, active: NDArray[np.bool_], box: InputBox) -> dict[str, F32]:
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

    def parameters(self, head: PLHead, active: NDArray[np.bool_], box: InputBox) -> dict[str, F32]:
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


GATES: dict[str, type[ActivationGate] | type[DenseGate]] = {
    ActivationGate.name: ActivationGate,
    DenseGate.name: DenseGate,
}


def make_gate(name: str) -> Gate:
    try:
        return GATES[name]()
    except KeyError:
        raise PatchError(f"unknown gate {name!r} (choose {', '.join(GATES)})") from None
