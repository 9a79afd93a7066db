"""The class-suppression patch form (prune/suppress.py) and the class mode of ``unlearn``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from prune.errors import PatchError
from prune.export import OUTPUT, PREFIX
from prune.formats import (
    CLASS_REMAP_FORMAT,
    CLASS_SUPPRESS_FORMAT,
    ClassClaim,
    MalformedError,
    float32_margin_holds,
    remap_bound,
    remap_problems,
    removed_text,
)
from prune.model import OrtRunner, load_model
from prune.regions import InputBox, box_from_data
from prune.suppress import Remap, export_suppressed, logit_bound, suppression_only
from prune.unlearn import unlearn
from prune.unlearn._class_remap import _fit_class_column, fit_remap, proxy_seed
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
    assert result.class_claim.form == CLASS_REMAP_FORMAT and s["remap"]["fitted_rows"] > 0
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
    plain = unlearn(work.raw, work.x_train, work.y_train, forget_class=k, class_remap=False)
    assert plain.class_claim is not None and plain.class_claim.form == CLASS_SUPPRESS_FORMAT
    assert "remap" not in plain.method and plain.summary["forget_accuracy_after"] == 0.0
    with pytest.raises(PatchError, match="class mode"):
        unlearn(work.raw, work.x_train, work.y_train, forget_class=k, class_mode="x")  # type: ignore[arg-type]


def _remap(classes: int, k: int, bound: float, seed: int) -> Remap:
    """An arbitrary (hostile-looking) remap: random map and shift, column K not zeroed."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, 2.0, (classes, classes)).astype(np.float32)
    shift = rng.normal(0.0, 5.0, classes).astype(np.float32)
    shift[k] = np.float32(10 * bound)  # would put K on top before the suppression
    return Remap(matrix=matrix, shift=shift)


@pytest.mark.parametrize("k", [0, 5])
def test_remapped_model_never_predicts_k_and_keeps_other_predictions(k: int) -> None:
    """Form v2 with any finite remap: K never on top (original or remapped rows), rows the
    original gives another class unchanged bit for bit, remapped rows the suppression of
    ``z A + beta``; the suppression-only model gives the served output from the logits."""
    work = digits_work()
    model = load_model(work.raw)
    box = box_from_data(work.x_train, input_space=True)
    bound = logit_bound(model.head, box)
    remap = _remap(model.head.classes, k, bound, seed=k)
    raw, _ = export_suppressed(model, forget_class=k, margin=1.0, box=box, remap=remap)
    meta = {p.key: p.value for p in onnx.load_from_string(raw).metadata_props}
    assert meta["prune.format"] == CLASS_REMAP_FORMAT
    rng = np.random.default_rng(k)
    x = np.concatenate(
        [work.x_train, rng.uniform(box.low, box.high, (500, work.x_test.shape[1]))]
    ).astype(np.float32)
    original = OrtRunner(work.raw, outputs=[model.head.output]).run(x)[0]
    patched = OrtRunner(raw, outputs=[OUTPUT]).run(x)[0]
    assert not (patched.argmax(1) == k).any()
    active = original[:, k] > np.delete(original, k, axis=1).max(axis=1)
    assert active.any() and (~active).any()
    np.testing.assert_array_equal(patched[~active], _formula(original[~active], k, 1.0))
    remapped = original[active].astype(np.float64) @ remap.matrix + remap.shift
    want = _formula(remapped.astype(np.float32), k, 1.0)
    keep = [j for j in range(model.head.classes) if j != k]
    np.testing.assert_allclose(patched[active][:, keep], want[:, keep], rtol=1e-5, atol=1e-4)
    tail = suppression_only(
        classes=model.head.classes, forget_class=k, margin=1.0, opset=17, remap=remap
    )
    np.testing.assert_array_equal(OrtRunner(tail, outputs=[OUTPUT]).run(original)[0], patched)


def test_remap_problems() -> None:
    k, bound = 2, 10.0
    remap = _remap(5, k, bound, seed=1)
    a, b = remap.matrix, remap.shift
    assert remap_problems(a, b, margin=8.0, bound=bound) is None
    assert remap_bound(bound, a, b) >= np.abs(b).max()
    bad = a.copy()
    bad[0, 1] = np.inf
    assert "non-finite" in str(remap_problems(bad, b, margin=8.0, bound=bound))
    assert "float32" in str(remap_problems(a.astype(np.float64), b, margin=8.0, bound=bound))
    assert "shapes" in str(remap_problems(a[:, :4], b, margin=8.0, bound=bound))
    huge = b.copy()
    huge[0] = np.float32(1e9)  # the remapped logits' float32 spacing exceeds the margin
    assert "margin" in str(remap_problems(a, huge, margin=8.0, bound=bound))


def test_fit_remap_learns_from_training_rows_only() -> None:
    import time

    work = digits_work()
    model = load_model(work.raw)
    box = box_from_data(work.x_train, input_space=True)
    bound = logit_bound(model.head, box)
    x = np.ascontiguousarray(work.x_train, dtype=np.float32)
    z = OrtRunner(work.raw, outputs=[model.head.output]).run(x)[0]
    k = 4
    fit = fit_remap(
        model.head, x, z, work.y_train, forget_class=k, bound=bound, margin=8.0, budget=20_000,
        seed=0, clock=time.perf_counter,
    )  # fmt: skip
    active = (work.y_train == k) & (z[:, k] > np.delete(z, k, axis=1).max(axis=1))
    assert fit.fitted_rows == int(active.sum()) > 0
    assert fit.proxy_rows == int((work.y_train != k).sum())
    assert remap_problems(fit.remap.matrix, fit.remap.shift, margin=8.0, bound=bound) is None
    # column K follows the proxy per row, not a constant placement above the other logits
    assert fit.class_column == "proxy-log-odds" and (fit.remap.matrix[:, k] != 0).any()
    remapped = z[active].astype(np.float64) @ fit.remap.matrix + fit.remap.shift
    gap = remapped[:, k] - np.delete(remapped, k, axis=1).max(axis=1)
    assert np.ptp(gap) > 0.1 and (gap < 0).all()
    again = fit_remap(
        model.head, x, z, work.y_train, forget_class=k, bound=bound, margin=8.0, budget=20_000,
        seed=0, clock=time.perf_counter,
    )  # fmt: skip
    np.testing.assert_array_equal(again.remap.matrix, fit.remap.matrix)  # seeded


def test_class_column_matches_the_log_odds_per_row() -> None:
    """L_K - logsumexp_{j != K} L_j reproduces a target that a linear L_K can reach exactly."""
    rng = np.random.default_rng(3)
    k, c = 2, 5
    z = rng.normal(0.0, 3.0, size=(400, c)).astype(np.float32)
    matrix = np.eye(c) + rng.normal(0.0, 0.1, size=(c, c))
    shift = rng.normal(0.0, 1.0, size=c)
    others = np.delete(z.astype(np.float64) @ matrix + shift, k, axis=1)
    lse = np.log(np.exp(others).sum(axis=1))
    want_column, want_shift = rng.normal(0.0, 0.5, size=c), -6.0
    log_odds = z.astype(np.float64) @ want_column + want_shift - lse
    column, beta = _fit_class_column(z, log_odds, matrix, shift, k)
    got = z.astype(np.float64) @ column + beta - lse
    assert np.abs(got - log_odds).max() < 0.05
    np.testing.assert_allclose(column, want_column, atol=0.02)


def test_fit_remap_falls_back_to_the_cap_when_the_margin_cannot_cover_the_fit() -> None:
    """A margin the float32 argument cannot honour at the fitted remap's bound: column K is
    zeroed and beta_K set to the bound of the others (K exactly the margin below the best)."""
    import time

    work = digits_work()
    model = load_model(work.raw)
    box = box_from_data(work.x_train, input_space=True)
    bound = logit_bound(model.head, box)
    x = np.ascontiguousarray(work.x_train, dtype=np.float32)
    z = OrtRunner(work.raw, outputs=[model.head.output]).run(x)[0]
    k = 4
    fit = fit_remap(
        model.head, x, z, work.y_train, forget_class=k, bound=bound, margin=1e-30,
        budget=5_000, seed=0, clock=time.perf_counter,
    )  # fmt: skip
    assert fit.class_column == "capped"
    assert (fit.remap.matrix[:, k] == 0).all()
    others = fit.remap.shift.copy()
    others[k] = 0.0
    assert fit.remap.shift[k] == np.float32(remap_bound(bound, fit.remap.matrix, others))


def test_proxy_seeds_are_not_the_small_integers_a_retraining_uses() -> None:
    """A proxy seeded s with the recipe's hyper-parameters is the model retrained with seed s."""
    seeds = {proxy_seed(s, i) for s in range(3) for i in range(3)}
    assert len(seeds) == 9 and not seeds & set(range(1000))


def test_a_model_with_an_output_tail_gets_the_tail_replayed() -> None:
    """Suppression acts on the logits before a Softmax tail; the served outputs keep their
    names and are the tail applied to ``prune/output``."""
    from onnx import helper

    from tests.prune._engine_models import graph_model

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(6, 4)).astype(np.float32)
    w2 = rng.normal(size=(3, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "w1"], ["h"], name="g1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("Gemm", ["r", "w2"], ["logits"], name="g2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="sm", axis=1),
    ]
    raw = graph_model(nodes, {"w1": w1, "w2": w2}, output=("probs", ["batch", 3]))
    model = load_model(raw)
    assert model.tail
    box = InputBox(low=0.0, high=1.0, source="data-range")
    for remap in (None, _remap(3, 1, 50.0, seed=3)):
        patched, _ = export_suppressed(model, forget_class=1, margin=4.0, box=box, remap=remap)
        proto = onnx.load_from_string(patched)
        assert [o.name for o in proto.graph.output] == ["probs", OUTPUT]
        assert proto.graph.node[-1].op_type == "Softmax"
        x = rng.uniform(0.0, 1.0, (400, 4)).astype(np.float32)
        probs, logits = OrtRunner(patched, outputs=["probs", OUTPUT]).run(x)
        assert not (probs.argmax(1) == 1).any()
        e = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_class_test_utility_is_the_served_models_on_a_cnn() -> None:
    """The test accuracies in the summary come from one pass of the served model (its copy of
    the original's logits and its output): they equal the original's and the patched file's
    predictions run separately."""
    work = digits_work("cnn")
    k = 2
    result = unlearn(
        work.raw,
        work.x_train,
        work.y_train,
        forget_class=k,
        x_test=work.x_test,
        y_test=work.y_test,
        threads=1,
    )
    s = result.summary
    before = OrtRunner(work.raw, outputs=["logits"]).run(work.x_test)[0].argmax(1)
    after = OrtRunner(result.patched_model, outputs=[OUTPUT]).run(work.x_test)[0].argmax(1)
    y = work.y_test
    assert s["test_accuracy_before"] == float((before == y).mean())
    assert s["test_accuracy_after"] == float((after == y).mean())
    assert s["test_prediction_changes"] == int((before != after).sum())
    for c in range(10):
        assert s["per_class_test_accuracy_after"][str(c)] == float((after[y == c] == c).mean())
    assert s["per_class_test_accuracy_after"][str(k)] == 0.0


def test_a_served_model_whose_original_logits_differ_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tampered export: the served file's copy of the original network has a changed output
    bias, so its original-logit tensor differs from the original's on the class rows; the
    class deletion must refuse it rather than report utility from it."""
    import prune.unlearn._class as class_module

    real = class_module.export_suppressed

    def tampered(*args: object, **kwargs: object) -> tuple[bytes, float]:
        patched, bound = real(*args, **kwargs)  # type: ignore[arg-type]
        proto = onnx.load_from_string(patched)
        (output_layer,) = [n for n in proto.graph.node if "logits" in n.output]
        bias_name = output_layer.input[2]
        for init in proto.graph.initializer:
            if init.name == bias_name:
                value = onnx.numpy_helper.to_array(init).copy()
                value += np.float32(0.5)
                init.CopyFrom(onnx.numpy_helper.from_array(value, name=bias_name))
        return proto.SerializeToString(), bound

    monkeypatch.setattr(class_module, "export_suppressed", tampered)
    work = digits_work()
    with pytest.raises(PatchError, match="original logits differ"):
        unlearn(work.raw, work.x_train, work.y_train, forget_class=4, class_remap=False)
