"""The class-suppression patch form (prune/suppress.py) and the class mode of ``unlearn``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from prune.errors import PatchError
from prune.export import OUTPUT, PREFIX
from prune.formats import ClassClaim, MalformedError, float32_margin_holds, removed_text
from prune.model import OrtRunner, load_model
from prune.regions import InputBox, box_from_data
from prune.suppress import export_suppressed, logit_bound
from prune.unlearn import unlearn
from tests.prune._engine_models import digits_work, random_mlp


def _formula(z: np.ndarray, k: int, m: float) -> np.ndarray:
    others = np.delete(z, k, axis=1).max(axis=1) - np.float32(m)
    out = z.copy()
    out[:, k] = np.minimum(z[:, k], others)
    return out


@pytest.mark.parametrize("k", [0, 3, 9])
def test_suppressed_model_keeps_the_original_and_never_predicts_k(k: int) -> None:
    work = digits_work()
    model = load_model(work.raw)
    box = box_from_data(work.x_train, input_space=True)
    raw, bound = export_suppressed(model, forget_class=k, margin=1.0, box=box)
    a, b = onnx.load_from_string(work.raw), onnx.load_from_string(raw)
    n, i = len(a.graph.node), len(a.graph.initializer)
    assert [x.SerializeToString() for x in b.graph.node[:n]] == [
        x.SerializeToString() for x in a.graph.node
    ]
    assert [x.SerializeToString() for x in b.graph.initializer[:i]] == [
        x.SerializeToString() for x in a.graph.initializer
    ]
    assert all(x.name.startswith(PREFIX) for x in [*b.graph.node[n:], *b.graph.initializer[i:]])
    assert [o.name for o in b.graph.output] == [OUTPUT]
    rng = np.random.default_rng(k)
    x = np.concatenate(
        [work.x_test, rng.uniform(box.low, box.high, (500, work.x_test.shape[1]))]
    ).astype(np.float32)
    original = OrtRunner(work.raw, outputs=[model.head.output]).run(x)[0]
    patched = OrtRunner(raw, outputs=[OUTPUT]).run(x)[0]
    np.testing.assert_array_equal(patched, _formula(original, k, 1.0))  # bit for bit
    assert not (patched.argmax(1) == k).any()
    kept = original.argmax(1) != k
    assert (patched.argmax(1)[kept] == original.argmax(1)[kept]).all()
    assert np.abs(original).max() <= bound


def test_logit_bound_holds_at_the_box_corners() -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        raw = random_mlp(Path(tmp) / "m.onnx", dims=(4, 8, 8, 3), seed=2)
    model = load_model(raw)
    box = InputBox(low=-1.0, high=2.0, source="data-range")
    corners = np.array(np.meshgrid(*[[-1.0, 2.0]] * 4)).reshape(4, -1).T
    logits, _ = model.head.forward(corners)
    assert np.abs(logits).max() <= logit_bound(model.head, box)


def test_a_margin_float32_cannot_honour_is_refused() -> None:
    work = digits_work()
    model = load_model(work.raw)
    box = box_from_data(work.x_train, input_space=True)
    with pytest.raises(PatchError, match="float32"):
        export_suppressed(model, forget_class=1, margin=1e-12, box=box)


def test_float32_margin_condition() -> None:
    assert float32_margin_holds(1.0, 1000.0)
    assert not float32_margin_holds(1e-6, 1000.0)
    assert not float32_margin_holds(1.0, float("inf"))
    # the condition is what makes fl(M - m) < M for every |M| <= bound
    rng = np.random.default_rng(0)
    bound, m = 4096.0, np.float32(float(np.spacing(np.float32(2 * 4096.0 + 1))))
    assert float32_margin_holds(float(m), bound)
    big = rng.uniform(-bound, bound, 10_000).astype(np.float32)
    assert ((big - m) < big).all()


def test_class_claim_round_trip_and_strictness() -> None:
    claim = ClassClaim(
        forget_class=3, margin="8.0", low="0.0", high="1.0", source="data-range", logit_bound="12.5"
    )
    doc = claim.to_dict()
    assert ClassClaim.from_dict(doc) == claim
    assert doc["removed"] == removed_text(3, 0.0, 1.0)
    assert "class 3 is never predicted" in doc["removed"]
    for key, value in (
        ("removed", "class 3 is gone"),
        ("kind", "class-regions"),
        ("margin", "0.0"),
    ):
        bad = {**doc, key: value}
        with pytest.raises(MalformedError):
            ClassClaim.from_dict(bad)


@pytest.mark.slow
def test_unlearn_class_modes() -> None:
    work = digits_work()
    k = 4
    result = unlearn(
        work.raw, work.x_train, work.y_train, forget_class=k, x_test=work.x_test, y_test=work.y_test
    )
    s = result.summary
    assert s["class_mode"] == "suppress" and result.complete and result.class_claim is not None
    assert s["forget_accuracy_after"] == 0.0
    assert s["per_class_test_accuracy_after"][str(k)] == 0.0
    for c, acc in s["per_class_test_accuracy_before"].items():
        if int(c) != k:
            assert s["per_class_test_accuracy_after"][c] >= acc
    assert all(c.target != k and c.region == "point-only" for c in result.claims)
    regions = unlearn(
        work.raw,
        work.x_train,
        work.y_train,
        forget_class=k,
        class_mode="regions",
        x_test=work.x_test,
        y_test=work.y_test,
    )
    assert regions.class_claim is None and regions.method["class_mode"] == "regions"
    with pytest.raises(PatchError, match="class mode"):
        unlearn(work.raw, work.x_train, work.y_train, forget_class=k, class_mode="x")  # type: ignore[arg-type]


def test_a_model_with_an_output_tail_is_refused() -> None:
    """Suppression replaces the outputs by logits; a Softmax tail would change the interface."""
    from onnx import helper

    from tests.prune._engine_models import graph_model

    w = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "w"], ["h"], name="g", transB=1),
        helper.make_node("Softmax", ["h"], ["logits"], name="act"),
    ]
    model = load_model(graph_model(nodes, {"w": w}))
    box = InputBox(low=0.0, high=1.0, source="data-range")
    with pytest.raises(PatchError, match="output tail"):
        export_suppressed(model, forget_class=1, margin=1.0, box=box)
