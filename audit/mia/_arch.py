"""The architecture of the auditor's reference models: read from the target's ONNX graph, or
declared by the auditor.

Reference-model attacks (shadow, LiRA, RMIA) are only as good as the match between the reference
models and the target. The auditor does not trust the owner's code, so it builds its own torch
models of the same shape:

* a ReLU MLP is read from the graph: the ancestors of the (original) logits output must be a chain
  of ``Gemm``/``MatMul`` layers separated by ``Relu`` (``Add``, ``Flatten``, ``Reshape``,
  ``Identity`` allowed). For a PRUNE-patched model (``prune.original_output`` metadata) the patch
  subgraph is ignored: the reference models copy the *original* network, which is what a
  retrained-from-scratch model would look like.
* any other graph the converter takes (Conv, pooling, BatchNorm, residual Adds, ...) is rebuilt
  node for node as a trainable torch module with fresh weights (``onnx``, see
  :mod:`audit.mia._onnx_torch`): reference models of the target's own architecture.
* a declaration overrides: ``onnx`` (force the graph conversion), ``cnn`` (the project's small
  CNN family: conv8-pool-conv16-pool-ReLU head) or ``mlp:64,64`` / ``cnn:128`` with widths.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from audit.errors import InputError
from audit.proof import Limits, read_bounded

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "module_from_state",
    "resolve_architecture",
    "state_to_numpy",
]

Kind = Literal["mlp", "cnn", "onnx"]
_CHAIN_OPS = frozenset({"Gemm", "MatMul", "Add", "Relu", "Flatten", "Reshape", "Identity"})


@dataclass(frozen=True)
class Architecture:
    """``kind`` with hidden widths, for inputs of ``input_shape`` (no batch axis) and ``classes``
    outputs. ``source`` says where it came from: ``onnx`` or ``declared``."""

    kind: Kind
    hidden: tuple[int, ...]
    input_shape: tuple[int, ...]
    classes: int
    source: Literal["onnx", "declared"] = "declared"
    graph: bytes | None = field(default=None, repr=False)
    """The ONNX model whose logits subgraph ``kind="onnx"`` rebuilds."""

    def build(self) -> nn.Module:
        """A freshly initialised torch module (initialisation follows torch's global RNG; the
        trainer seeds it)."""
        return ARCHITECTURES[self.kind](self)

    def describe(self) -> str:
        if self.kind == "onnx":
            digest = hashlib.sha256(self.graph or b"").hexdigest()[:16]
            return f"onnx:sha256={digest}"
        return f"{self.kind}:{','.join(str(h) for h in self.hidden)}"


def _build_mlp(arch: Architecture) -> nn.Module:
    dims = [int(np.prod(arch.input_shape)), *arch.hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], arch.classes))
    return nn.Sequential(*layers)


def _build_cnn(arch: Architecture) -> nn.Module:
    if len(arch.input_shape) != 3:
        raise InputError(
            f"the cnn architecture takes images [C, H, W], the data has shape {arch.input_shape}"
        )
    c, h, w = arch.input_shape
    head: list[nn.Module] = []
    dims = [16 * (h // 4) * (w // 4), *arch.hidden]
    for a, b in itertools.pairwise(dims):
        head += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *head,
        nn.Linear(dims[-1], arch.classes),
    )


def _build_onnx(arch: Architecture) -> nn.Module:
    from audit.mia._onnx_torch import OnnxModule

    if arch.graph is None:
        raise InputError("the onnx architecture needs the target's ONNX model")
    return OnnxModule(arch.graph)


ARCHITECTURES: dict[str, Callable[[Architecture], nn.Module]] = {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "onnx": _build_onnx,
}


def resolve_architecture(
    *,
    onnx_model: bytes | Path | None,
    declared: str | None,
    input_shape: tuple[int, ...],
    classes: int,
) -> Architecture:
    """The declaration when given (``mlp``/``cnn`` with optional ``:w1,w2``; missing widths are
    read from the graph's linear chain), else the MLP read from the ONNX graph."""
    chain = _linear_chain(onnx_model) if onnx_model is not None else None
    if declared is None:
        if chain is None:
            raise InputError("no ONNX model to read the architecture from: declare it (--arch)")
        widths, blocker = chain
        if blocker is None and not widths:
            blocker = "graph without linear layers"
        if blocker is not None:
            return _from_graph(onnx_model, input_shape, classes)
        return _checked("mlp", tuple(widths[:-1]), widths[-1], input_shape, classes, "onnx")
    if declared == "onnx":
        if onnx_model is None:
            raise InputError("--arch onnx needs the target's ONNX model")
        return _from_graph(onnx_model, input_shape, classes)
    name, _, widths_text = declared.partition(":")
    if name not in ARCHITECTURES:
        raise InputError(f"unknown architecture {name!r} (choose {', '.join(ARCHITECTURES)})")
    kind = cast(Kind, name)
    if widths_text:
        try:
            hidden = tuple(int(w) for w in widths_text.split(","))
        except ValueError as exc:
            raise InputError(f"architecture widths must be integers, got {widths_text!r}") from exc
        return _checked(kind, hidden, classes, input_shape, classes, "declared")
    if chain is None or not chain[0]:
        raise InputError(f"declare the hidden widths too, e.g. --arch {kind}:64")
    head = chain[0]
    return _checked(kind, tuple(head[:-1]), head[-1], input_shape, classes, "declared")


def _model_bytes(path: Path) -> bytes:
    """A model file through the bounded, no-follow loader (an auditor-named path)."""
    return read_bounded(path, Limits().model_bytes, what=f"model {path}", owner=False)


def _from_graph(
    model: bytes | Path | None, input_shape: tuple[int, ...], classes: int
) -> Architecture:
    """The target's own graph as the architecture, after one trial forward pass."""
    raw = _model_bytes(model) if isinstance(model, Path) else model
    arch = Architecture("onnx", (), tuple(input_shape), classes, "onnx", raw)
    module = arch.build()
    with torch.no_grad():
        out = module.eval()(torch.zeros((2, *input_shape)))
    if tuple(out.shape) != (2, classes):
        raise InputError(
            f"the converted graph gives outputs of shape {tuple(out.shape)[1:]} per sample, "
            f"the labels need {classes} classes"
        )
    return arch


def _checked(
    kind: Kind,
    hidden: tuple[int, ...],
    out: int,
    input_shape: tuple[int, ...],
    classes: int,
    source: Literal["onnx", "declared"],
) -> Architecture:
    if out != classes:
        raise InputError(f"the model has {out} outputs but the labels need {classes} classes")
    if not hidden or any(h <= 0 for h in hidden):
        raise InputError(f"hidden widths must be positive, got {hidden}")
    return Architecture(kind, hidden, tuple(input_shape), classes, source)


def _linear_chain(model: bytes | Path) -> tuple[list[int], str | None]:
    """Output widths of the linear layers feeding the (original) logits, in order, and the first
    op type that is not part of a plain ReLU MLP (``None`` when there is none)."""
    import onnx

    try:
        raw = _model_bytes(model) if isinstance(model, Path) else model
        proto = onnx.load_from_string(raw)
    except Exception as exc:  # onnx raises protobuf DecodeError and OSError subclasses
        raise InputError(f"cannot read the ONNX model: {exc.__class__.__name__}") from exc
    graph = proto.graph
    meta = {p.key: p.value for p in proto.metadata_props}
    output = meta.get("prune.original_output") or graph.output[0].name
    producer = {name: node for node in graph.node for name in node.output}
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    ancestors: set[int] = set()
    stack = [output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in ancestors:
            continue
        ancestors.add(id(node))
        stack.extend(node.input)
    chain = [n for n in graph.node if id(n) in ancestors]
    blocker = next((n.op_type for n in chain if n.op_type not in _CHAIN_OPS), None)
    widths: list[int] = []
    for node in chain:
        if node.op_type not in ("Gemm", "MatMul") or node.input[1] not in shapes:
            continue
        shape = shapes[node.input[1]]
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        widths.append(int(shape[0] if trans_b else shape[-1]))
    if blocker is None and sum(n.op_type == "Relu" for n in chain) != max(len(widths) - 1, 0):
        blocker = "non-ReLU layer"
    return widths, blocker


def state_to_numpy(module: nn.Module) -> dict[str, Any]:
    """Weights as plain numpy arrays (what crosses process boundaries; never a pickle of code)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def module_from_state(arch: Architecture, state: dict[str, Any]) -> nn.Module:
    module = arch.build()
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    module.eval()
    return module
