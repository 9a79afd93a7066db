"""Edits a dishonest owner makes to a patched ONNX model (docs/FORMATS.md, "Patched ONNX").

Each function takes serialized model bytes and returns new bytes that pass ``onnx.checker``;
nothing is modified in place. The patch parameters are the ``prune/patch/*`` initializers; the
gate tensor is ``prune/patch/g`` (``[N, P]``) and the flattened cut ``prune/patch/x``, as
``prune.export`` names them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from threat_models.errors import ScenarioError

if TYPE_CHECKING:
    from threat_models.scenario import Scenario

__all__ = [
    "PREFIX",
    "cut_values",
    "declared_box",
    "exact_input_gate",
    "metadata",
    "patch_parameters",
    "scale_original_initializer",
    "with_parameters",
]

PREFIX = "prune/patch/"
_GATE = PREFIX + "g"
_CUT = PREFIX + "x"


def _load(raw: bytes) -> Any:
    import onnx

    return onnx.load_from_string(raw)


def _save(proto: Any) -> bytes:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises ValidationError
        raise ScenarioError(f"the edited model fails onnx.checker: {exc}") from exc
    return bytes(proto.SerializeToString())


def cut_values(scenario: Scenario, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """The committed original model's cut values ``[N, d]`` of model inputs ``x`` (the input
    itself, flattened, for an MLP; the feature tensor for a CNN): what ``prune/patch/x`` holds."""
    from prune.model import load_model

    imported = load_model(scenario.original_bytes)
    if imported.input_space:
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return np.asarray(imported.cut_values(np.asarray(x, dtype=np.float32)), dtype=np.float64)


def declared_box(method: Mapping[str, Any]) -> tuple[float, float]:
    """``(low, high)`` of the honest run's declared input box of the cut space."""
    box = method.get("input_box")
    if not isinstance(box, Mapping):
        raise ScenarioError("the honest run declares no input box")
    return float(box["low"]), float(box["high"])


def metadata(raw: bytes) -> dict[str, str]:
    return {p.key: p.value for p in _load(raw).metadata_props}


def patch_parameters(raw: bytes) -> dict[str, NDArray[np.float32]]:
    """The ``prune/patch/*`` initializers by short name (``d``, ``K``, ``pos``, ...)."""
    from onnx import numpy_helper

    return {
        t.name[len(PREFIX) :]: np.asarray(numpy_helper.to_array(t), dtype=np.float32)
        for t in _load(raw).graph.initializer
        if t.name.startswith(PREFIX)
    }


def with_parameters(raw: bytes, values: Mapping[str, NDArray[Any]]) -> bytes:
    """Replace (or add) ``prune/patch/<name>`` initializers. Shapes may change (the patch
    subgraph is shape-generic in the number of patches)."""
    from onnx import numpy_helper

    proto = _load(raw)
    inits = proto.graph.initializer
    index = {t.name: i for i, t in enumerate(inits)}
    for short, value in values.items():
        tensor = numpy_helper.from_array(np.asarray(value, dtype=np.float32), PREFIX + short)
        if tensor.name in index:
            inits[index[tensor.name]].CopyFrom(tensor)
        else:
            inits.append(tensor)
    return _save(proto)


def scale_original_initializer(raw: bytes, *, factor: float) -> tuple[bytes, str]:
    """Multiply the last weight matrix of the original graph by ``factor`` (a "recalibration"
    of the original subgraph); returns the model and the initializer's name."""
    from onnx import numpy_helper

    proto = _load(raw)
    originals = [
        t for t in proto.graph.initializer if not t.name.startswith(PREFIX) and len(t.dims) == 2
    ]
    if not originals:
        raise ScenarioError("the model has no weight matrix to change")
    target = originals[-1]
    value = numpy_helper.to_array(target).astype(np.float32) * np.float32(factor)
    target.CopyFrom(numpy_helper.from_array(value, target.name))
    return _save(proto), str(target.name)


def exact_input_gate(raw: bytes, keys: NDArray[np.float32], *, sharpness: float) -> bytes:
    """AND the declared gate with an equality test on the cut: patch ``u`` fires only where
    ``sum_i |x_i - keys[u, i]| < 1 / sharpness``. Built from piecewise-linear ops:
    ``e = Relu(1 - sharpness * L1(x, key_u))``, ``g' = g - Relu(g - e)`` (= ``min(g, e)``)."""
    from onnx import helper, numpy_helper

    proto = _load(raw)
    graph = proto.graph
    if not any(_GATE in n.output for n in graph.node) or not any(
        _CUT in n.output for n in graph.node
    ):
        raise ScenarioError("the model has no prune/patch/g gate or prune/patch/x cut to filter")
    names = {
        "key": PREFIX + "filter/key",
        "sharp": PREFIX + "filter/sharpness",
        "one": PREFIX + "filter/one",
        "axes": PREFIX + "filter/axes",
        "axis1": PREFIX + "filter/axis1",
    }
    graph.initializer.extend(  # float32 only: the patch digest covers exactly these
        [
            numpy_helper.from_array(np.asarray(keys, dtype=np.float32)[None], names["key"]),
            numpy_helper.from_array(np.asarray(sharpness, dtype=np.float32), names["sharp"]),
            numpy_helper.from_array(np.asarray(1.0, dtype=np.float32), names["one"]),
        ]
    )

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> Any:
        return helper.make_node(op, inputs, [PREFIX + out], name=PREFIX + out, **attrs)

    def axes(name: str, value: int) -> Any:
        tensor = numpy_helper.from_array(np.asarray([value], dtype=np.int64), names[name])
        return helper.make_node("Constant", [], [names[name]], name=names[name], value=tensor)

    filtered = PREFIX + "filter/g"
    new_nodes = [
        axes("axes", 2),
        axes("axis1", 1),
        node("Unsqueeze", [_CUT, names["axis1"]], "filter/x3"),
        node("Sub", [PREFIX + "filter/x3", names["key"]], "filter/diff"),
        node("Abs", [PREFIX + "filter/diff"], "filter/abs"),
        node("ReduceSum", [PREFIX + "filter/abs", names["axes"]], "filter/l1", keepdims=0),
        node("Mul", [PREFIX + "filter/l1", names["sharp"]], "filter/scaled"),
        node("Sub", [names["one"], PREFIX + "filter/scaled"], "filter/1-s"),
        node("Relu", [PREFIX + "filter/1-s"], "filter/e"),
        node("Sub", [_GATE, PREFIX + "filter/e"], "filter/g-e"),
        node("Relu", [PREFIX + "filter/g-e"], "filter/excess"),
        node("Sub", [_GATE, PREFIX + "filter/excess"], "filter/g"),
    ]
    consumers = [n for n in graph.node if _GATE in n.input]
    for consumer in consumers:
        for i, name in enumerate(consumer.input):
            if name == _GATE:
                consumer.input[i] = filtered
    position = max(i for i, n in enumerate(graph.node) if _GATE in n.output) + 1
    for offset, new in enumerate(new_nodes):
        graph.node.insert(position + offset, new)
    return _save(proto)
