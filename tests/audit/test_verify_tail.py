"""``structure.tail``: the static proof that every served output is a faithful, row-by-row
function of ``prune/output``. Each tampered tail below serves something the certified logits do
not say (a duplicate label, an order-reversing step after the softmax, rows coupled over the
batch) and must be refused; the tails exporters emit (torch's Softmax, skl2onnx's label lookup
and ZipMap) must be accepted. Each refused model is also run with onnxruntime to show the served
output really departs from the logits' argmax."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from audit.verify._graph import PATCH_OUTPUT
from audit.verify._tail import tail_problems

D, C = 6, 4
OUT = PATCH_OUTPUT
RNG = np.random.default_rng(0)
ML = "ai.onnx.ml"


def _init(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    opset: int = 17,
) -> onnx.ModelProto:
    """``x [N, D]`` -> Gemm -> ``prune/output [N, C]`` -> ``nodes`` -> ``outputs`` (with
    ``prune/output`` last)."""
    w = RNG.normal(size=(D, C)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], [OUT]), *nodes],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
        [*outputs, helper.make_tensor_value_info(OUT, TensorProto.FLOAT, ["N", C])],
        initializer=[_init("w", w), *inits],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ML, 1)]
    )
    model.ir_version = 8
    return model


def _label_out(name: str = "label", elem: int = TensorProto.INT64) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None)


def _probs_out(name: str = "probs") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _skl2onnx(classes: np.ndarray, zipmap: list[int] | None = None) -> onnx.ModelProto:
    """skl2onnx's MLPClassifier tail: Softmax -> ArgMax -> ArrayFeatureExtractor(classes) ->
    Reshape [-1] -> Cast, and ZipMap of the probabilities."""
    labels = list(range(C)) if zipmap is None else zipmap
    nodes = [
        helper.make_node("Softmax", [OUT], ["p"]),
        helper.make_node("ArgMax", ["p"], ["idx"], axis=1),
        helper.make_node("ZipMap", ["p"], ["probs"], domain=ML, classlabels_int64s=labels),
        helper.make_node("ArrayFeatureExtractor", ["classes", "idx"], ["afe"], domain=ML),
        helper.make_node("Reshape", ["afe", "flat"], ["r"]),
        helper.make_node("Cast", ["r"], ["label"], to=TensorProto.INT64),
    ]
    inits = [_init("classes", classes), _init("flat", np.array([-1], np.int64))]
    zip_out = helper.make_value_info(
        "probs",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(
                TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
            )
        ),
    )
    return _model(nodes, inits, [_label_out(), zip_out])


def _problems(model: onnx.ModelProto) -> list[str]:
    return [str(p) for p in tail_problems(model)]


def _run(model: onnx.ModelProto, x: np.ndarray, name: str) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([name], {"x": x.astype(np.float32)})[0])


# -- accepted -------------------------------------------------------------------------------------


def test_no_tail_is_faithful() -> None:
    assert _problems(_model([], [], [])) == []


def test_torch_softmax_tail_is_faithful() -> None:
    model = _model([helper.make_node("Softmax", [OUT], ["y"], axis=1)], [], [_probs_out("y")])
    assert _problems(model) == []


def test_skl2onnx_label_and_zipmap_tail_is_faithful() -> None:
    model = _skl2onnx(np.arange(C, dtype=np.int64) * 3 + 1)
    assert _problems(model) == []
    x = RNG.normal(size=(9, D))
    want = (np.arange(C) * 3 + 1)[_run(model, x, OUT).argmax(axis=1)]
    assert np.array_equal(_run(model, x, "label"), want)


def test_string_labels_through_a_label_encoder_are_faithful() -> None:
    nodes = [
        helper.make_node("ArgMax", [OUT], ["idx"], axis=1, keepdims=0),
        helper.make_node("Gather", ["names", "idx"], ["name"], axis=0),
        helper.make_node(
            "LabelEncoder",
            ["name"],
            ["label"],
            domain=ML,
            keys_strings=["a", "b", "c", "d"],
            values_int64s=[10, 11, 12, 13],
        ),
    ]
    inits = [_init("names", np.array(["a", "b", "c", "d"], dtype=object))]
    model = _model(nodes, inits, [_label_out()], opset=17)
    model.opset_import[1].version = 2
    assert _problems(model) == []


# -- refused --------------------------------------------------------------------------------------


def test_duplicate_class_labels_are_refused() -> None:
    """classes [0, 1, 2, 0]: a sample moved from class 0 to class 3 is still served label 0."""
    model = _skl2onnx(np.array([0, 1, 2, 0], np.int64))
    assert "not pairwise distinct" in _problems(model)[0]


def test_a_zipmap_with_duplicate_labels_is_refused() -> None:
    model = _skl2onnx(np.arange(C, dtype=np.int64), zipmap=[0, 1, 2, 0])
    assert "ZipMap" in _problems(model)[0] and "distinct" in _problems(model)[0]


def test_a_label_table_of_another_class_count_is_refused() -> None:
    model = _skl2onnx(np.arange(C + 1, dtype=np.int64))
    assert f"not [{C}]" in _problems(model)[0]


def test_a_cast_that_merges_labels_is_refused() -> None:
    model = _skl2onnx(np.array([0.25, 0.5, 0.75, 1.0], np.float32))
    model.graph.node[-1].attribute[0].i = TensorProto.INT64
    assert "exact and distinct" in _problems(model)[0]


def _after_softmax(extra: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    nodes = [helper.make_node("Softmax", [OUT], ["p"], axis=1), *extra]
    nodes.append(helper.make_node("ArgMax", ["q"], ["label"], axis=1))
    return _model(nodes, inits, [_label_out()])


def _permuted() -> onnx.ModelProto:
    perm = np.eye(C, dtype=np.float32)[::-1].copy()
    return _after_softmax([helper.make_node("MatMul", ["p", "perm"], ["q"])], [_init("perm", perm)])


def _negated() -> onnx.ModelProto:
    return _after_softmax([helper.make_node("Neg", ["p"], ["q"])], [])


def _merged_pairs() -> onnx.ModelProto:
    """Two logits per class summed after the softmax (a ReduceSum-like MatMul)."""
    merge = np.tile(np.eye(C // 2, dtype=np.float32), (2, 1))
    return _after_softmax(
        [helper.make_node("MatMul", ["p", "merge"], ["q"])], [_init("merge", merge)]
    )


def _softmax_over_batch() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Softmax", [OUT], ["p"], axis=0),
        helper.make_node("ArgMax", ["p"], ["label"], axis=1),
    ]
    return _model(nodes, [], [_label_out()])


def _batch_size_trigger() -> onnx.ModelProto:
    """In batches of exactly 5 rows the served label is the second-best class."""
    nodes = [
        helper.make_node("ArgMax", [OUT], ["first"], axis=1),
        helper.make_node("TopK", [OUT, "two"], ["top", "top_idx"], axis=1),
        helper.make_node("Slice", ["top_idx", "one", "two", "one"], ["second"]),
        helper.make_node("Shape", [OUT], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["rows"], axis=0),
        helper.make_node("Equal", ["rows", "five"], ["switch"]),
        helper.make_node("Where", ["switch", "second", "first"], ["label"]),
    ]
    inits = [
        _init("two", np.array([2], np.int64)),
        _init("one", np.array([1], np.int64)),
        _init("zero", np.array(0, np.int64)),
        _init("five", np.array(5, np.int64)),
    ]
    return _model(nodes, inits, [_label_out()])


def _argmin() -> onnx.ModelProto:
    nodes = [helper.make_node("ArgMin", [OUT], ["label"], axis=1)]
    return _model(nodes, [], [_label_out()])


def _original_served() -> onnx.ModelProto:
    """An output that is not computed from ``prune/output`` at all."""
    model = _model([helper.make_node("Softmax", [OUT], ["y"], axis=1)], [], [_probs_out("y")])
    model.graph.output.append(_probs_out("w"))
    return model


@pytest.mark.parametrize(
    ("build", "expect"),
    [
        (_permuted, "MatMul"),
        (_negated, "Neg"),
        (_merged_pairs, "MatMul"),
        (_softmax_over_batch, "axis 0"),
        (_batch_size_trigger, "TopK"),
        (_argmin, "ArgMin"),
        (_original_served, "not a faithful function"),
    ],
)
def test_an_unfaithful_tail_is_refused(build: object, expect: str) -> None:
    assert callable(build)
    problems = _problems(build())
    assert problems and expect in problems[0], problems


def test_the_batch_size_trigger_really_serves_another_label_in_batches_of_five() -> None:
    """The tampered graph is real: onnxruntime serves the logits' argmax for 4 or 6 rows and
    something else for 5."""
    model = _batch_size_trigger()
    x = RNG.normal(size=(5, D))
    for rows in (4, 6):
        xs = RNG.normal(size=(rows, D))
        served = _run(model, xs, "label").ravel()
        assert np.array_equal(served, _run(model, xs, OUT).argmax(axis=1))
    assert not np.array_equal(_run(model, x, "label").ravel(), _run(model, x, OUT).argmax(axis=1))


def test_a_softmax_over_the_batch_moves_the_label_with_the_other_rows() -> None:
    model = _softmax_over_batch()
    x = RNG.normal(size=(64, D))
    assert not np.array_equal(_run(model, x, "label"), _run(model, x, OUT).argmax(axis=1))


def test_a_tail_reading_a_value_before_the_logits_is_refused() -> None:
    nodes = [
        helper.make_node("Softmax", [OUT], ["p"], axis=1),
        helper.make_node("Add", ["p", "x"], ["q"]),
    ]
    model = _model(nodes, [], [_probs_out("q")])
    assert "Add" in _problems(model)[0]


def test_a_reshape_that_moves_classes_across_rows_is_refused() -> None:
    nodes = [
        helper.make_node("Reshape", [OUT, "target"], ["r"]),
        helper.make_node("ArgMax", ["r"], ["label"], axis=1),
    ]
    model = _model(nodes, [_init("target", np.array([C, -1], np.int64))], [_label_out()])
    assert "not [N, C]" in _problems(model)[0]


def test_a_label_table_a_caller_may_override_is_refused() -> None:
    """An initializer also declared as a graph input is not a constant (a feed replaces it)."""
    model = _skl2onnx(np.arange(C, dtype=np.int64))
    model.graph.input.append(helper.make_tensor_value_info("classes", TensorProto.INT64, [C]))
    assert "not a constant" in _problems(model)[0]


def test_a_label_table_a_node_also_computes_is_refused() -> None:
    """A node output named like the table's initializer: two definitions, not a constant."""
    model = _skl2onnx(np.arange(C, dtype=np.int64))
    model.graph.node.insert(0, helper.make_node("Identity", ["classes"], ["classes"]))
    assert "not a constant" in _problems(model)[0]
