"""Importer units for exported-model shapes: output tails, LeakyRelu/PRelu breakpoints,
external data confinement, the default cut and its refusals, and the export's output tail
(checked by the auditor's structure rules, including tampered tails that must fail)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from audit.verify._affine import parse_head
from audit.verify._graph import find_head, original_problems, patch_form_problems
from prune.errors import ModelImportError
from prune.export import OUTPUT, export_patched
from prune.model import OrtRunner, inspect_model, load_model, read_model
from prune.patched import PatchSet, patch_bounds
from prune.regions import InputBox

RNG = np.random.default_rng(7)


def _model(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    outputs: list[onnx.ValueInfoProto],
    *,
    extra_opsets: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        outputs,
        initializer=[numpy_helper.from_array(v, name=k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def _classifier(act: str = "LeakyRelu") -> onnx.ModelProto:
    """x -> Cast -> Gemm([1,H] bias) -> act -> MatMul+Add -> Softmax -> probs, ArgMax -> label."""
    w1 = RNG.normal(size=(6, 8)).astype(np.float32)
    b1 = RNG.normal(size=(1, 8)).astype(np.float32)
    w2 = RNG.normal(size=(8, 3)).astype(np.float32)
    b2 = RNG.normal(size=(1, 3)).astype(np.float32)
    slope = np.full((8,), 0.2, np.float32)
    act_node = (
        helper.make_node("PRelu", ["h", "slope"], ["a"], name="act")
        if act == "PRelu"
        else helper.make_node(
            act, ["h"], ["a"], name="act", **({"alpha": 0.1} if act == "LeakyRelu" else {})
        )
    )
    nodes = [
        helper.make_node("Cast", ["x"], ["xc"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Gemm", ["xc", "w1", "b1"], ["h"], name="gemm"),
        act_node,
        helper.make_node("MatMul", ["a", "w2"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b2"], ["logits"], name="add"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
        helper.make_node("ArgMax", ["probs"], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    if act == "PRelu":
        inits["slope"] = slope
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
    ]
    return _model(nodes, inits, outputs)


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu", "PRelu"])
def test_tail_and_breakpoints_match_onnxruntime(act: str) -> None:
    raw = _classifier(act).SerializeToString()
    model = load_model(raw)
    head = model.head
    assert head.cut == "x" and head.output == "logits" and head.hidden == ("h",)
    assert [model.proto.graph.node[i].name for i in model.tail] == ["softmax", "argmax"]
    x = RNG.normal(size=(40, 6)).astype(np.float32)
    z, logits = OrtRunner(raw, outputs=["h", "logits"]).run(x)
    ours, pre = head.forward(x.astype(np.float64))
    np.testing.assert_allclose(ours, logits, atol=1e-5)
    np.testing.assert_allclose(pre, z, atol=1e-5)
    audit_head = find_head(model.proto, "x")
    assert audit_head.hidden == ("h",) and audit_head.output == "logits"
    parsed = parse_head(model.proto, audit_head)
    assert parsed.max_error(x.astype(np.float64), z, logits) < 1e-5
    _, _, lin, f0 = parsed.local_affine(x[0].astype(np.float64))
    np.testing.assert_allclose(lin @ x[0] + f0, logits[0], atol=1e-4)


def _exported(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bytes]:
    raw = model.SerializeToString()
    imported = load_model(raw)
    x = RNG.normal(size=(1, 6)).astype(np.float64)
    _, z = imported.head.forward(x)
    d = np.zeros((1, 3))
    d[0, 0] = 50.0
    box = InputBox(low=-10.0, high=10.0, source="data-range")
    patches = PatchSet(
        "activation", 1000.0, z >= 0, d, None, patch_bounds(None, d, box), np.zeros(1, np.int64)
    )
    return imported.proto, export_patched(imported, patches, box)


def test_export_replays_the_tail_on_the_patched_logits() -> None:
    original, patched_raw = _exported(_classifier())
    patched = onnx.load_from_string(patched_raw)
    assert [o.name for o in patched.graph.output] == ["label", "probs", OUTPUT]
    x = RNG.normal(size=(30, 6)).astype(np.float32)
    label, probs, logits = OrtRunner(patched_raw, outputs=["label", "probs", OUTPUT]).run(x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(label, logits.argmax(axis=1))
    head = find_head(original, "x")
    assert original_problems(original, patched) == []
    assert patch_form_problems(original, patched, head) == []


def _tamper_label_reads_original(patched: onnx.ModelProto) -> None:
    """The served label ignores the patch: ArgMax on the original logits' softmax."""
    patched.graph.node.append(helper.make_node("Softmax", ["logits"], ["p0"], axis=1))
    for node in patched.graph.node:
        if node.name == "argmax":
            node.input[0] = "p0"


def _tamper_drop_patched_output(patched: onnx.ModelProto) -> None:
    del patched.graph.output[2]


def _tamper_metadata(patched: onnx.ModelProto) -> None:
    for prop in patched.metadata_props:
        if prop.key == "prune.tail":
            prop.value = "none"


@pytest.mark.parametrize(
    "tamper",
    [_tamper_label_reads_original, _tamper_drop_patched_output, _tamper_metadata],
    ids=["label-reads-original", "no-patched-output", "tail-metadata"],
)
def test_tampered_tail_fails_the_structure_check(tamper) -> None:  # type: ignore[no-untyped-def]
    original, patched_raw = _exported(_classifier())
    patched = onnx.load_from_string(patched_raw)
    tamper(patched)
    head = find_head(original, "x")
    assert original_problems(original, patched) + patch_form_problems(original, patched, head)


def test_outputs_not_from_the_logits_are_refused() -> None:
    model = _classifier()
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 8]))
    with pytest.raises(ModelImportError, match="output 'h' is not computed from the logits"):
        load_model(model.SerializeToString())


def test_clip_is_refused_by_name_and_the_default_cut_goes_after_it() -> None:
    model = _classifier("Relu")
    w0 = RNG.normal(size=(6, 6)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w0, name="w0"))
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0), name="lo"))
    model.graph.initializer.append(numpy_helper.from_array(np.float32(6), name="hi"))
    model.graph.node[0].output[0] = "x0"
    model.graph.node.insert(1, helper.make_node("MatMul", ["x0", "w0"], ["x1"], name="mm0"))
    model.graph.node.insert(2, helper.make_node("Clip", ["x1", "lo", "hi"], ["xc"], name="relu6"))
    raw = model.SerializeToString()
    with pytest.raises(ModelImportError, match=r"Clip \(Clip node 'relu6'\).*cut after it"):
        load_model(raw, cut="x")
    assert load_model(raw).head.cut == "xc"
    _, reports = inspect_model(raw)
    assert [r.tensor for r in reports if r.ok] == ["xc", "h"]


def test_no_activation_after_an_explicit_cut_is_a_clear_error() -> None:
    with pytest.raises(ModelImportError, match="no Relu/LeakyRelu/PRelu after the cut 'a'"):
        load_model(_classifier().SerializeToString(), cut="a")


def _with_external_data(folder: Path, location: str) -> Path:
    model = _classifier()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="model.onnx.data",
        size_threshold=0,
    )  # fmt: skip
    if location != "model.onnx.data":
        proto = onnx.load(str(path), load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        path.write_bytes(proto.SerializeToString())
    return path


def test_external_data_is_embedded_from_the_model_folder(tmp_path: Path) -> None:
    path = _with_external_data(tmp_path / "m", "model.onnx.data")
    raw, embedded = read_model(path)
    assert embedded and load_model(raw).head.hidden == ("h",)
    with pytest.raises(ModelImportError, match="external data; load the model from its file"):
        load_model(path.read_bytes())


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "missing.data"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    path = _with_external_data(tmp_path / "m", location)
    with pytest.raises(ModelImportError, match=r"outside the model.s folder|not a regular file"):
        read_model(path)
