"""Reading an ONNX model: parse, validate, index producers/consumers and constant tensors.

Threat assumption: the model file is the owner's own, but it may be malformed or come from another
exporter; everything that cannot be read raises :class:`ModelImportError` with one line naming the
file problem, the op or the node.

Logits and output tail: exporters end classifiers with Softmax/LogSoftmax/ArgMax and extra
outputs (probabilities, label). The *logits* tensor is the one input shared by the first of those
ops on the way to the outputs (or the single graph output when there are none); every graph
output must be computed from the logits and constants alone (the *tail*). The patch is added to
the logits and the tail is replayed on the patched logits (docs/FORMATS.md, "Output tail")."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.errors import ModelImportError

__all__ = ["MIN_OPSET", "TAIL_OPS", "GraphIndex", "describe_node", "parse_model", "read_model"]

MIN_OPSET = 13
"""The patch subgraph uses the opset-13 forms of ReduceSum/Unsqueeze (axes as inputs)."""

TAIL_OPS = frozenset({"Softmax", "LogSoftmax", "ArgMax"})
"""Default-domain ops that mark the start of the output tail: their input is the logits."""


def describe_node(node: Any, index: int) -> str:
    """``Gemm node '/0/Gemm'`` (or ``#index`` when the node has no name)."""
    name = node.name or f"#{index} (output '{node.output[0] if node.output else '?'}')"
    return f"{node.op_type} node '{name}'"


def read_model(path: Path, *, limit: int = 2 << 30, cut: str | None = None) -> tuple[bytes, bool]:
    """The model file at ``path`` as self-contained ONNX bytes that take any batch size, and
    whether they differ from the file's bytes. Tensors stored as external data
    (``torch.onnx.export``'s ``model.onnx.data``) are read from regular files *inside the model's
    folder* (no absolute path, no ``..``, no symbolic link: :func:`prune.formats.read_regular`),
    each file at most ``limit`` bytes, and embedded; a float64 model is converted to float32
    (:mod:`prune.model._dtype`); a fixed batch dimension (an export without dynamic shapes) is
    freed (:mod:`prune.model._batch`); when the model has no valid cut because
    of a ``MaxPool``, or ``cut`` names a tensor that is a valid cut only with the pooling in the
    head (a cut before a ``MaxPool``: finer regions), the pooling is rewritten into its ReLU form
    (:mod:`prune.model._maxpool`). The patched export and the certificate's original digest are
    over these bytes."""
    from prune.formats import UnreadableFile, read_regular

    try:
        raw = read_regular(path, limit)
    except UnreadableFile as exc:
        raise ModelImportError(f"model: {exc}") from None
    proto = _decode(raw)
    external = [t for t in _all_tensors(proto.graph) if _is_external(t)]
    if external:
        _embed(path, proto, external, limit)
    shape = checked_sample_shape(proto)
    converted = batch = pools = 0
    if shape is not None:
        from prune.model._batch import free_batch
        from prune.model._dtype import to_float32

        proto, converted = to_float32(proto, shape)
        proto, batch = free_batch(proto, _real_inputs(proto)[0].name, shape)
        proto, pools = _expand_maxpools(proto, shape, cut)
    if not external and not converted and not batch and not pools:
        return raw, False
    if proto.ByteSize() >= 2_000_000_000:
        raise ModelImportError(
            f"{path} with its external data is over the 2 GB protobuf limit; not supported"
        )
    return bytes(proto.SerializeToString()), True


def checked_sample_shape(proto: Any) -> tuple[int, ...] | None:
    """The single real input's per-sample shape when the model passes onnx.checker and the shape
    is static (else ``None``: :func:`parse_model` refuses such a model in its own words, and the
    normalisations of :func:`read_model` do not apply)."""
    import onnx

    inputs = _real_inputs(proto)
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    rest = [d.dim_value if d.HasField("dim_value") else 0 for d in list(dims)[1:]]
    if not dims or not all(d > 0 for d in rest):
        return None
    try:
        onnx.checker.check_model(proto)
    except Exception:  # onnx raises ValidationError and friends
        return None
    return tuple(int(d) for d in rest)


def _valid_cut(proto: Any, cut: str | None) -> bool:
    """Whether ``cut`` (``None``: some tensor of the graph) is a valid cut (``True`` when the
    graph cannot even be indexed: the normal import reports that in its own words)."""
    from prune.model import _candidates, _report

    try:
        index = GraphIndex.build(proto)
        names = _candidates(index) if cut is None else [cut]
        return any(_report(index, name).ok for name in names)
    except ModelImportError:
        return True


def _expand_maxpools(proto: Any, shape: tuple[int, ...], cut: str | None) -> tuple[Any, int]:
    """:func:`prune.model._maxpool.expand_maxpools` when the model has a ``MaxPool`` and, as
    exported, no valid cut (``cut`` is ``None``) or ``cut`` is not a valid cut, and the rewrite
    makes it one; else unchanged, 0. Tensor names outside the pooling are kept, so a cut named
    before a pool names the same tensor in both graphs."""
    from prune.model._maxpool import POOLS, expand_maxpools

    if not any(node.op_type in POOLS for node in proto.graph.node) or _valid_cut(proto, cut):
        return proto, 0
    rewritten, count = expand_maxpools(proto, shape)
    if count and _valid_cut(rewritten, cut):
        return rewritten, count
    return proto, 0


def _embed(path: Path, proto: Any, external: list[Any], limit: int) -> None:
    """Embed each external tensor's bytes (see :func:`read_model`), in place."""
    from onnx import TensorProto

    from prune.formats import UnreadableFile, read_regular

    folder = path.resolve().parent
    files: dict[Path, bytes] = {}
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelImportError(
                f"tensor '{tensor.name}' stores its data at {location!r}, outside the model's "
                f"folder {folder}; keep the data file next to the model"
            )
        if target not in files:
            try:
                files[target] = read_regular(folder / location, limit)
            except UnreadableFile as exc:
                raise ModelImportError(
                    f"tensor '{tensor.name}' stores its data in {location!r}, which is not a "
                    f"regular file in the model's folder ({exc})"
                ) from None
        data = files[target]
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else len(data) - offset
        except ValueError:
            raise ModelImportError(f"tensor '{tensor.name}': malformed external data") from None
        if offset < 0 or length < 0 or offset + length > len(data):
            raise ModelImportError(
                f"tensor '{tensor.name}' reads bytes {offset}..{offset + length} of {location!r}, "
                f"which has {len(data)}"
            )
        tensor.raw_data = data[offset : offset + length]
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def _decode(raw: bytes) -> Any:
    import onnx

    if not raw:
        raise ModelImportError("the model file is empty")
    try:
        return onnx.load_from_string(raw)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelImportError(
            f"not an ONNX model (cannot decode protobuf: {exc.__class__.__name__})"
        ) from exc


def _is_external(tensor: Any) -> bool:
    import onnx

    return bool(tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data)


def _all_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def parse_model(raw: bytes) -> Any:
    """Decode and check an ONNX ``ModelProto``; reject what the patch engine cannot export.
    ``raw`` must be self-contained (see :func:`read_model` for models with external data)."""
    import onnx

    proto = _decode(raw)
    for tensor in _all_tensors(proto.graph):
        if _is_external(tensor):
            raise ModelImportError(
                f"tensor '{tensor.name}' is stored as external data; load the model from its "
                "file with prune.model.read_model (the CLI does), which embeds the data found "
                "next to it"
            )
    if not proto.graph.node:
        raise ModelImportError("not an ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelImportError(f"the ONNX model fails onnx.checker: {first}") from exc
    opset = default_opset(proto)
    if opset < MIN_OPSET:
        raise ModelImportError(
            f"the model uses ONNX opset {opset}; the patch export needs opset >= {MIN_OPSET} "
            "(re-export the model with a newer opset)"
        )
    if len(_real_inputs(proto)) != 1:
        raise ModelImportError(
            f"the model must have exactly one input, it has {len(_real_inputs(proto))}"
        )
    return proto


def default_opset(proto: Any) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelImportError("the model imports no default-domain ONNX opset")


def _real_inputs(proto: Any) -> list[Any]:
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


@dataclass(frozen=True, eq=False)
class GraphIndex:
    """Lookup tables over one graph. ``constants`` holds every initializer and every ``Constant``
    node output as float64/int64 arrays; ``producer``/``consumers`` map tensor names to node
    positions (nodes are in the file's topological order). ``output_name`` is the logits tensor
    (see the module docstring), ``outputs`` the graph outputs and ``tail`` the positions of the
    nodes computed from the logits."""

    proto: Any
    nodes: tuple[Any, ...]
    constants: Mapping[str, NDArray[Any]]
    producer: Mapping[str, int]
    consumers: Mapping[str, tuple[int, ...]]
    input_name: str
    input_shape: tuple[int | str, ...]
    output_name: str
    outputs: tuple[str, ...] = ()
    tail: tuple[int, ...] = ()
    _shapes: dict[str, tuple[int | str, ...]] = field(default_factory=dict, repr=False)
    _inferred: dict[str, tuple[int | str, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, proto: Any) -> GraphIndex:
        from onnx import numpy_helper

        graph = proto.graph
        constants: dict[str, NDArray[Any]] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        producer: dict[str, int] = {}
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for name in node.output:
                producer[name] = i
            for name in node.input:
                if name:
                    consumers.setdefault(name, []).append(i)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_value(node, i)
                if value is not None:
                    constants[node.output[0]] = value
        inp = _real_inputs(proto)[0]
        dims = inp.type.tensor_type.shape.dim
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
        )
        nodes = tuple(graph.node)
        outputs = tuple(o.name for o in graph.output)
        logits, tail = _logits_and_tail(nodes, outputs, set(constants))
        return cls(
            proto=proto,
            nodes=nodes,
            constants=constants,
            producer=producer,
            consumers={k: tuple(v) for k, v in consumers.items()},
            input_name=inp.name,
            input_shape=shape,
            output_name=logits,
            outputs=outputs,
            tail=tail,
        )

    def tensor_names(self) -> set[str]:
        names = {self.input_name}
        for node in self.nodes:
            names.update(o for o in node.output if o)
        return names

    def sample_shape(self, tensor: str) -> tuple[int, ...]:
        """Per-sample shape (without the batch axis) of a tensor, by ONNX shape inference."""
        if tensor == self.input_name:
            dims = self.input_shape[1:]
        else:
            dims = self._inferred_shapes().get(tensor, ())
            if not dims or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
                dims = self._runtime_shapes().get(tensor, ())
            if not dims:
                raise ModelImportError(
                    f"cannot infer the shape of tensor '{tensor}' (neither ONNX shape inference "
                    "nor a run of the model gives one)"
                )
            dims = dims[1:]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise ModelImportError(
                f"tensor '{tensor}' has a symbolic per-sample shape {dims}; only the batch axis may be dynamic"
            )
        return tuple(int(d) for d in dims)

    def _runtime_shapes(self) -> dict[str, tuple[int | str, ...]]:
        """Shapes seen by onnxruntime on one all-zero sample (for tensors after shape
        computations that ONNX shape inference cannot follow, e.g. ``x.view(x.size(0), ...)``);
        the per-sample shape must be static, which the head's evaluation re-checks."""
        if "\0runtime" in self._shapes:
            return self._shapes
        import onnx
        import onnxruntime as ort

        self._shapes["\0runtime"] = ()
        try:
            per_sample = self.sample_shape(self.input_name)
        except ModelImportError:
            return self._shapes
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        known = {o.name for o in proto.graph.output}
        names = [o for n in proto.graph.node for o in n.output if o and o not in known]
        for name in names:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(
                proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            feed = {self.input_name: np.zeros((1, *per_sample), dtype=np.float32)}
            outs = session.run(names, feed)
        except Exception:  # onnxruntime's own types; shape inference then stays the only source
            return self._shapes
        for name, value in zip(names, outs, strict=True):
            if isinstance(value, np.ndarray):
                self._shapes[name] = tuple(int(d) for d in value.shape)
        return self._shapes

    def _inferred_shapes(self) -> dict[str, tuple[int | str, ...]]:
        if "\0inferred" in self._shapes:
            return self._inferred
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(self.proto)
        except Exception as exc:
            raise ModelImportError(f"ONNX shape inference fails on the model: {exc}") from exc
        out: dict[str, tuple[int | str, ...]] = {}
        for vi in [*inferred.graph.value_info, *inferred.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            out[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
            )
        self._shapes["\0inferred"] = ()
        self._inferred.update(out)
        return out


def _logits_and_tail(
    nodes: tuple[Any, ...], outputs: tuple[str, ...], constants: set[str]
) -> tuple[str, tuple[int, ...]]:
    """The logits tensor and the tail node positions (module docstring)."""
    after_tail: set[str] = set()
    starts: list[tuple[int, Any]] = []
    for i, node in enumerate(nodes):
        reads_tail = any(name in after_tail for name in node.input)
        if node.op_type in TAIL_OPS and node.domain in ("", "ai.onnx") and not reads_tail:
            starts.append((i, node))
            after_tail.update(node.output)
        elif reads_tail:
            after_tail.update(node.output)
    candidates = sorted({node.input[0] for _, node in starts})
    if not candidates:
        if len(outputs) != 1:
            raise ModelImportError(
                f"the model has {len(outputs)} outputs and no Softmax/LogSoftmax/ArgMax to "
                "tell the logits from them; export the logits as the single output"
            )
        return outputs[0], ()
    if len(candidates) > 1:
        where = ", ".join(describe_node(node, i) for i, node in starts)
        raise ModelImportError(
            f"the output tail ({where}) reads {len(candidates)} different tensors "
            f"({', '.join(candidates)}); the model must have one logits tensor"
        )
    logits = candidates[0]
    _refuse_one_logit_binary(nodes, logits)
    after = {logits}
    tail: list[int] = []
    for i, node in enumerate(nodes):
        if any(name in after for name in node.input):
            tail.append(i)
            after.update(o for o in node.output if o)
    for i in tail:
        node = nodes[i]
        for name in node.input:
            if name and name not in after and name not in constants:
                raise ModelImportError(
                    f"{describe_node(node, i)} in the output tail after the logits '{logits}' "
                    f"also reads '{name}'; every output must be computed from the logits alone"
                )
    for name in outputs:
        if name not in after:
            raise ModelImportError(
                f"the model output '{name}' is not computed from the logits '{logits}'; "
                "export the classifier's outputs only"
            )
    return logits, tuple(tail)


_PASS_THROUGH = frozenset({"Concat", "Sub", "Add", "Mul", "Neg", "Identity", "Reshape", "Cast"})


def _refuse_one_logit_binary(nodes: tuple[Any, ...], logits: str) -> None:
    """A two-class model with one logit ``z`` exports its scores as ``[1 - s(z), s(z)]``
    (skl2onnx for a binary ``MLPClassifier``): the tail's input is then built from a Sigmoid,
    so no cut exists and the per-tensor reasons ("cut after it") would send the user looking
    for one. Name the real obstacle instead."""
    producer = {out: (i, node) for i, node in enumerate(nodes) for out in node.output if out}
    last = producer.get(logits)
    if last is None or last[1].op_type != "Concat" or len(last[1].input) != 2:
        return
    frontier, seen = [logits], set()
    for _ in range(4):
        ahead: list[str] = []
        for name in frontier:
            if name in seen or name not in producer:
                continue
            seen.add(name)
            i, node = producer[name]
            if node.op_type == "Sigmoid":
                raise ModelImportError(
                    f"the scores '{logits}' are built from a Sigmoid ({describe_node(node, i)}): "
                    "a one-logit binary classifier (e.g. skl2onnx for two classes) is not "
                    "supported, PRUNE patches one logit per class; export two logits (a 2-unit "
                    "last layer, then Softmax)"
                )
            if node.op_type in _PASS_THROUGH:
                ahead.extend(node.input)
        frontier = ahead


def _constant_value(node: Any, index: int) -> NDArray[Any] | None:
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return np.asarray(numpy_helper.to_array(attr.t))
        if attr.name == "value_float":
            return np.asarray(attr.f, dtype=np.float64)
        if attr.name == "value_floats":
            return np.asarray(list(attr.floats), dtype=np.float64)
        if attr.name == "value_int":
            return np.asarray(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.asarray(list(attr.ints), dtype=np.int64)
    raise ModelImportError(f"{describe_node(node, index)} has no supported value attribute")
