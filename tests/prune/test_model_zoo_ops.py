"""Importer units for exported-model shapes: output tails, LeakyRelu/PRelu breakpoints, Clip
(two units per input, on both sides), external data confinement, the default cut and its
refusals, and the export's output tail (checked by the auditor's structure rules, including
tampered tails that must fail)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from audit.verify import CheckUnavailable
from audit.verify._affine import parse_head
from audit.verify._graph import find_head, original_problems, patch_form_problems
from prune.cli import cli as prune_cli
from prune.errors import ModelImportError
from prune.export import OUTPUT, export_patched
from prune.model import OrtRunner, inspect_model, load_model, read_model
from prune.patched import PatchSet, patch_bounds
from prune.regions import InputBox
from threat_models.leakage import patched_regions

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


def _clipped(lo: np.ndarray | None, hi: np.ndarray | None, *, constants: bool = False) -> bytes:
    """``_classifier("Relu")`` with ``x -> MatMul -> Clip(lo, hi)`` in front (a bound ``None``
    is an empty input); bounds as initializers or, with ``constants``, ``Constant`` nodes (the
    legacy exporter's form)."""
    model = _classifier("Relu")
    w0 = RNG.normal(size=(6, 6)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w0, name="w0"))
    inputs = ["x1", "", ""]
    extra: list[onnx.NodeProto] = []
    for position, (name, value) in enumerate((("lo", lo), ("hi", hi)), start=1):
        if value is None:
            continue
        inputs[position] = name
        if constants:
            tensor = numpy_helper.from_array(value, name=name)
            extra.append(helper.make_node("Constant", [], [name], name=f"c_{name}", value=tensor))
        else:
            model.graph.initializer.append(numpy_helper.from_array(value, name=name))
    model.graph.node[0].output[0] = "x0"
    clip = helper.make_node("Clip", [n for n in inputs if n] if hi is not None else inputs[:2],
                            ["xc"], name="relu6")  # fmt: skip
    if lo is None:
        clip.input[:] = inputs
    for i, node in enumerate(
        [*extra, helper.make_node("MatMul", ["x0", "w0"], ["x1"], name="mm0"), clip]
    ):
        model.graph.node.insert(1 + i, node)
    return bytes(model.SerializeToString())


@pytest.mark.parametrize(
    ("lo", "hi", "constants"),
    [(0.0, 6.0, False), (-1.0, 1.0, True), (-0.5, None, False), (0.25, 0.25, False)],
    ids=["relu6", "hardtanh-constants", "min-only", "min=max"],
)
def test_clip_head_matches_onnxruntime_on_both_sides(
    lo: float, hi: float | None, constants: bool
) -> None:
    """A Clip inside the head: the default cut is the input, the Clip's input is a unit per
    bound (``t - min``, ``t - max``) on the owner's side and in the verifier's own parse, and
    both agree with onnxruntime on the logits and on the units' float32 values."""
    raw = _clipped(np.float32(lo), None if hi is None else np.float32(hi), constants=constants)
    model = load_model(raw)
    head = model.head
    assert head.cut == "x"
    bounds = [lo] if hi is None else [lo, hi]
    assert head.hidden == ("x1",) * len(bounds) + ("h",)
    assert [head.offset(i) for i in range(len(head.hidden))] == [*bounds, 0.0]
    x = RNG.normal(scale=3.0, size=(200, 6)).astype(np.float32)
    t, h, logits = OrtRunner(raw, outputs=["x1", "h", "logits"]).run(x)
    served = np.concatenate([t - np.float32(b) for b in bounds] + [h], axis=1)
    ours, pre = head.forward(x.astype(np.float64))
    np.testing.assert_allclose(ours, logits, atol=1e-4)
    np.testing.assert_allclose(pre, served, atol=1e-4)
    both = (served >= 0) == (pre >= 0)
    assert both.mean() > 0.999  # only points within rounding of a breakpoint may differ
    audit_head = find_head(model.proto, "x")
    assert audit_head.hidden == head.hidden
    assert [audit_head.offset(i) for i in range(len(head.hidden))] == [*bounds, 0.0]
    parsed = parse_head(model.proto, audit_head)
    assert parsed.max_error(x.astype(np.float64), served, logits) < 1e-4
    # the verifier's parse uses its own offsets: a wrong bound breaks the agreement
    shifted = type(audit_head)(
        audit_head.input, audit_head.cut, audit_head.hidden, audit_head.output,
        audit_head.nodes, audit_head.tail, audit_head.layers,
        (*(b + 0.5 for b in bounds), 0.0),
    )  # fmt: skip
    assert parse_head(model.proto, shifted).max_error(x.astype(np.float64), served, logits) > 1e-2
    _, reports = inspect_model(raw)
    assert reports[0].tensor == "x" and reports[0].ok
    assert reports[0].breakpoint_ops == ("Clip", "Relu") and reports[0].activations == 2


def test_inspect_lists_clip_as_piecewise_linear(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_clipped(np.float32(0.0), np.float32(6.0)))
    result = CliRunner().invoke(prune_cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "default cut: x " in result.output
    assert "  x  [2 piecewise-linear activations (1 Clip, 1 Relu)" in result.output


@pytest.mark.parametrize(
    ("lo", "hi", "message"),
    [
        (None, 6.0, "without a finite lower bound"),
        (2.0, 1.0, r"min 2.0 > max 1.0"),
        (0.0, float("nan"), "max is NaN"),
        (float("-inf"), 1.0, "without a finite lower bound"),
    ],
    ids=["max-only", "min>max", "nan", "min=-inf"],
)
def test_clip_refusals_name_the_node_on_both_sides(
    lo: float | None, hi: float | None, message: str
) -> None:
    raw = _clipped(None if lo is None else np.float32(lo), None if hi is None else np.float32(hi))
    with pytest.raises(ModelImportError, match=rf"Clip node 'relu6'.*{message}"):
        load_model(raw, cut="x")
    assert load_model(raw).head.cut == "xc"  # the default cut goes after it
    with pytest.raises(CheckUnavailable, match="Clip 'relu6'"):
        find_head(onnx.load_from_string(raw), "x")


def test_export_gates_on_the_clip_units() -> None:
    """The patch graph subtracts each nonzero bound from its Clip unit (``z<i>/unit``), and
    the patch is on exactly when the served units have the stored pattern."""
    raw = _clipped(np.float32(-1.0), np.float32(1.0))
    imported = load_model(raw)
    x = RNG.normal(size=(1, 6)).astype(np.float64)
    _, z = imported.head.forward(x)
    d = np.zeros((1, 3))
    d[0, 0] = 50.0
    box = InputBox(low=-10.0, high=10.0, source="data-range")
    patches = PatchSet(
        "activation", 1000.0, z >= 0, d, None, patch_bounds(None, d, box), np.zeros(1, np.int64)
    )
    patched_raw = export_patched(imported, patches, box)
    patched = onnx.load_from_string(patched_raw)
    subs = [n.name for n in patched.graph.node if n.op_type == "Sub" and "/unit" in n.name]
    assert subs == ["prune/patch/z0/unit", "prune/patch/z1/unit"]
    assert patch_form_problems(imported.proto, patched, find_head(imported.proto, "x")) == []
    probe = np.concatenate([x, RNG.normal(scale=3.0, size=(50, 6))]).astype(np.float32)
    t, h, before = OrtRunner(raw, outputs=["x1", "h", "logits"]).run(probe)
    (after,) = OrtRunner(patched_raw, outputs=[OUTPUT]).run(probe)
    units = np.concatenate([t + 1.0, t - 1.0, h], axis=1) >= 0
    same = (units == (z >= 0)).all(axis=1)
    assert same[0]
    np.testing.assert_allclose(after[same] - before[same], np.tile(d, (same.sum(), 1)), atol=1e-3)
    np.testing.assert_allclose(after[~same], before[~same], atol=1e-5)
    # a reader of the public format (the leakage threat model) sees the same gate
    gate = patched_regions(patched_raw, probe)[:, 0]
    np.testing.assert_array_equal(gate[same], 1.0)
    assert (gate[~same] < 1.0).all()


def test_no_activation_after_an_explicit_cut_is_a_clear_error() -> None:
    with pytest.raises(ModelImportError, match="no Relu/LeakyRelu/PRelu/Clip after the cut 'a'"):
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
