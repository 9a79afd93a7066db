"""The canonical patch graph: the verifier's own rebuild (audit/verify/_canonical.py) equals what
the owner's exporter (prune.export) writes, for every gate and tail form, and any change to the
graph is named by its first difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from audit.verify._canonical import (
    PatchSpec,
    canonical_patch,
    compare_patch_graph,
    expected_metadata,
    gate_linear,
)
from audit.verify._graph import find_head, match_original_nodes, metadata
from audit.verify._patch import read_patch
from prune.export import export_patched
from prune.model import load_model
from prune.patched import PatchSet, patch_bounds
from prune.regions import InputBox
from tests.audit.adversarial.kit import build_work

BOX = InputBox(0.0, 1.0, "data-range")


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_work(tmp_path_factory.mktemp("canonical") / "work").model.read_bytes()


def _export(original: bytes, *, gate: str, tail: str) -> bytes:
    imported = load_model(original)
    head = imported.head
    rng = np.random.default_rng(0)
    patches = 3
    active = rng.random((patches, head.n_hidden)) > 0.5
    d = np.zeros((patches, head.classes))
    d[np.arange(patches), [1, 2, 3]] = 5.0
    C = None
    if tail == "network":
        d[:, 0] = -1.0  # entries outside {0, +-K}: the general patch network
    if tail == "affine":
        C = rng.normal(size=(patches, head.input_dim, head.classes)) * 0.01
    patch_set = PatchSet(
        gate=gate,
        n=100.0,
        active=active,
        d=d,
        C=C,
        K=patch_bounds(C, d, BOX),
        targets=np.array([1, 2, 3]),
    )
    return export_patched(imported, patch_set, BOX)


def _problems(original: bytes, patched_bytes: bytes) -> list[str]:
    base, patched = onnx.load_from_string(original), onnx.load_from_string(patched_bytes)
    meta = metadata(patched)
    head = find_head(base, meta["prune.cut"])
    params = read_patch(patched, gate=meta["prune.gate"])
    hidden = params.pos.shape[0] if params.pos is not None else params.b.shape[0] // params.patches  # type: ignore[union-attr]
    cut_dim = int(base.graph.input[0].type.tensor_type.shape.dim[1].dim_value)
    spec = PatchSpec(
        head=head,
        gate=meta["prune.gate"],
        patches=params.patches,
        classes=params.classes,
        hidden=hidden,
        cut_dim=cut_dim,
        affine=params.C is not None,
        linear=gate_linear(params),
    )
    _, nodes = match_original_nodes(base, patched)
    return compare_patch_graph(
        expected=canonical_patch(spec),
        patch_nodes=nodes,
        patched=patched,
        original=base,
        expected_meta=expected_metadata(head, meta["prune.gate"], meta.get("prune.tail")),
    )


@pytest.mark.parametrize("gate", ["activation", "dense"])
@pytest.mark.parametrize("tail", ["linear", "network", "affine"])
def test_owner_export_is_the_canonical_graph(original: bytes, gate: str, tail: str) -> None:
    assert _problems(original, _export(original, gate=gate, tail=tail)) == []


def _edited(original: bytes, edit: object) -> bytes:
    proto = onnx.load_from_string(_export(original, gate="activation", tail="network"))
    edit(proto)  # type: ignore[operator]
    return bytes(proto.SerializeToString())


def test_changed_attribute_is_named(original: bytes) -> None:
    def edit(proto: onnx.ModelProto) -> None:
        for node in proto.graph.node:
            if node.name == "prune/patch/h_sum":
                node.attribute[0].i = 1  # keepdims

    problems = _problems(original, _edited(original, edit))
    assert problems and "ReduceSum 'prune/patch/h_sum'" in problems[0]


def test_swapped_inputs_extra_node_and_initializer_are_named(original: bytes) -> None:
    def swap(proto: onnx.ModelProto) -> None:
        for node in proto.graph.node:
            if node.name == "prune/patch/gate/violation":
                node.input[0], node.input[1] = node.input[1], node.input[0]

    assert "gate/violation" in _problems(original, _edited(original, swap))[0]

    def extra(proto: onnx.ModelProto) -> None:
        proto.graph.node.append(
            helper.make_node("Identity", ["prune/patch/g"], ["prune/patch/spare"])
        )
        proto.graph.initializer.append(
            onnx.numpy_helper.from_array(np.zeros(1, np.float32), "prune/patch/spare0")
        )

    problems = _problems(original, _edited(original, extra))
    assert "unexpected extra Identity" in problems[0]
    assert any("unexpected initializer 'prune/patch/spare0'" in p for p in problems)

    def constant(proto: onnx.ModelProto) -> None:
        for i, tensor in enumerate(proto.graph.initializer):
            if tensor.name == "prune/patch/gate/one":
                value = np.asarray(0.5, np.float32)
                proto.graph.initializer[i].CopyFrom(
                    onnx.numpy_helper.from_array(value, tensor.name)
                )

    assert any("gate/one" in p for p in _problems(original, _edited(original, constant)))


def test_unknown_metadata_is_named(original: bytes, tmp_path: Path) -> None:
    def meta(proto: onnx.ModelProto) -> None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "prune.mode", "batch"

    assert any("unexpected metadata" in p for p in _problems(original, _edited(original, meta)))
