"""Calibrated unlearning (issue 13): ``prune prepare``, calibrated targets, the flat-margin patch
and its claims, on a tiny digits MLP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prune.baselines import TrainRecipe
from prune.calibrate import (
    DEFAULT_TOLERANCE,
    PreparedReferences,
    calibrated_patches,
    class_conditional_targets,
    cross_fitted_targets,
    load_prepared,
    prepare,
    save_prepared,
    true_class_margins,
)
from prune.claims import CalibratedClaim
from prune.cli import cli
from prune.errors import DataError, PatchError, PruneError
from prune.export import OUTPUT
from prune.gates import ROUTED_FROM
from prune.model import OrtRunner, load_model
from prune.train import TrainConfig
from prune.unlearn import unlearn
from prune.unlearn._points import declare_box
from tests.prune._engine_models import DigitsWork, digits_work

FORGET = np.array([3, 7, 12, 40, 41, 99, 250, 600], dtype=np.int64)


@pytest.fixture(scope="module")
def work() -> DigitsWork:
    return digits_work()


def _recipe(work: DigitsWork) -> TrainRecipe:
    config = TrainConfig(arch="mlp", hidden=(16, 16), epochs=8, seed=0)
    return TrainRecipe(config=config, input_shape=(64,), classes=10)


@pytest.fixture(scope="module")
def prepared(work: DigitsWork) -> PreparedReferences:
    return prepare(
        work.raw, work.x_train, work.y_train, recipe=_recipe(work), folds=3, x_heldout=work.x_test
    )


def test_prepare_every_row_is_out_of_exactly_one_fold(
    work: DigitsWork, prepared: PreparedReferences
) -> None:
    assert prepared.folds == 3
    assert np.bincount(prepared.fold).min() >= len(work.y_train) // 3
    assert prepared.out_logits.shape == (len(work.y_train), 10)
    assert prepared.heldout_folds is not None and prepared.heldout_folds.shape[0] == 3
    # the out-model is less sure of a training row than the original (which saw it)
    original = OrtRunner(work.raw, outputs=[load_model(work.raw).head.output]).run(work.x_train)[0]
    m_in = true_class_margins(original, work.y_train).mean()
    m_out = true_class_margins(prepared.out_logits, work.y_train).mean()
    assert m_out < m_in


def test_prepared_round_trip_and_digest_binding(
    work: DigitsWork, prepared: PreparedReferences, tmp_path: Path
) -> None:
    save_prepared(prepared, tmp_path / "p")
    back = load_prepared(tmp_path / "p", model=work.raw, x_train=work.x_train, y_train=work.y_train)
    np.testing.assert_array_equal(back.out_logits, prepared.out_logits)
    np.testing.assert_array_equal(back.fold, prepared.fold)
    with pytest.raises(DataError, match="another model"):
        load_prepared(
            tmp_path / "p", model=work.raw + b"x", x_train=work.x_train, y_train=work.y_train
        )
    other_y = work.y_train.copy()
    other_y[0] = (other_y[0] + 1) % 10
    with pytest.raises(DataError, match="other training data"):
        load_prepared(tmp_path / "p", model=work.raw, x_train=work.x_train, y_train=other_y)
    with pytest.raises(PruneError, match="not empty"):
        save_prepared(prepared, tmp_path / "p")


def test_cross_fitted_targets_keep_out_model_distribution(prepared: PreparedReferences) -> None:
    rows = FORGET
    original = np.zeros((len(rows), 10)) + 3.0
    plain = cross_fitted_targets(prepared, rows, original, calibration="none")
    scaled = cross_fitted_targets(prepared, rows, original, calibration="temperature")
    out = prepared.out_logits[rows].astype(np.float64)
    # softmax-equivalent to the out-model's logits; the mean is the original's
    np.testing.assert_allclose(
        plain.logits - plain.logits.mean(1, keepdims=True),
        out - out.mean(1, keepdims=True),
        atol=1e-5,
    )
    np.testing.assert_allclose(plain.logits.mean(axis=1), 3.0)
    assert len(scaled.scales) == 3 and all(s > 0 for s in scaled.scales)
    assert scaled.source == "cross-fitted"


def test_retained_calibration_interpolates_the_scale_in_the_training_fraction(
    prepared: PreparedReferences,
) -> None:
    """``retained``: all data kept = the original's scale (``temperature``); the fold models'
    own fraction = their own scale (``none``); less data = further from the original's scale,
    in the same direction as the fold models are; out of range is refused."""
    rows, original = FORGET, np.zeros((len(FORGET), 10))
    temperature = cross_fitted_targets(prepared, rows, original, calibration="temperature")
    full = cross_fitted_targets(prepared, rows, original, calibration="retained", retained=1.0)
    np.testing.assert_allclose(full.logits, temperature.logits)
    fold = (prepared.folds - 1) / prepared.folds
    own = cross_fitted_targets(prepared, rows, original, calibration="retained", retained=fold)
    np.testing.assert_allclose(own.scales, 1.0)
    np.testing.assert_allclose(
        own.logits, cross_fitted_targets(prepared, rows, original, calibration="none").logits
    )
    half = cross_fitted_targets(prepared, rows, original, calibration="retained", retained=0.3)
    a, h = np.log(temperature.scales), np.log(half.scales)
    assert (np.sign(h) == -np.sign(a)).all() and (np.abs(h) > 0).all()
    with pytest.raises(DataError, match="retained fraction"):
        cross_fitted_targets(prepared, rows, original, calibration="retained", retained=0.0)


def test_class_conditional_targets_match_held_out_quantiles() -> None:
    rng = np.random.default_rng(0)
    member = rng.normal(size=(400, 3))
    member[np.arange(400), 0] += 6.0  # members of class 0 are confident
    held = rng.normal(size=(400, 3))
    held[np.arange(400), 0] += 2.0  # non-members less so
    y = np.zeros(400, dtype=np.int64)
    forget = member[:50]
    out = class_conditional_targets(
        forget, y[:50], member_logits=member, member_y=y, heldout_logits=held, heldout_y=y
    )
    got = true_class_margins(out.logits, y[:50])
    want = np.median(true_class_margins(held, y))
    assert abs(np.median(got) - want) < 0.6
    np.testing.assert_array_equal(out.logits[:, 1:], forget[:, 1:])  # only the label moves
    assert out.source == "class-conditional"


def test_calibrated_unlearn_matches_targets_with_a_flat_certified_margin(
    work: DigitsWork, prepared: PreparedReferences
) -> None:
    result = unlearn(
        work.raw,
        work.x_train,
        work.y_train,
        forget_indices=FORGET,
        x_test=work.x_test,
        y_test=work.y_test,
        target_policy="calibrated",
        prepared=prepared,
        calibrated_tolerance=0.0,
    )
    assert result.complete and len(result.claims) == len(FORGET)
    logits = OrtRunner(result.patched_model, outputs=[OUTPUT]).run(result.forget_x)[0]
    targets = cross_fitted_targets(
        prepared,
        FORGET,
        OrtRunner(work.raw, outputs=[load_model(work.raw).head.output])
        .run(result.forget_x)[0]
        .astype(np.float64),
    ).logits
    for claim in result.claims:
        assert isinstance(claim, CalibratedClaim)
        row = logits[claim.leaf_index].astype(np.float64)
        np.testing.assert_allclose(row, claim.output, atol=1e-3 * (1 + np.abs(row).max()))
        assert row[claim.label] - row[claim.rival] <= claim.upper_margin
        assert claim.source == "cross-fitted"
    # a point that has its own region gets its target (up to float32)
    np.testing.assert_allclose(logits[0], targets[0], atol=1e-3 * (1 + np.abs(targets[0]).max()))
    # the true-class margin is flat over the region: probe points that keep the pattern
    imported = load_model(work.raw)
    head = imported.head
    rng = np.random.default_rng(0)
    x0 = result.forget_x[0].astype(np.float64)
    _, z0 = head.forward(x0[None])
    claim = result.claims[0]
    assert isinstance(claim, CalibratedClaim)
    kept = 0
    for _ in range(40):
        x = np.clip(x0 + rng.normal(scale=1e-3, size=x0.shape), 0.0, 1.0)
        _, z = head.forward(x[None])
        if not np.array_equal(z >= 0, z0 >= 0):
            continue
        kept += 1
        out = OrtRunner(result.patched_model, outputs=[OUTPUT]).run(x[None].astype(np.float32))[0]
        margin = float(out[0, claim.label] - out[0, claim.rival])
        assert margin <= claim.upper_margin + 1e-4
        assert margin == pytest.approx(claim.upper_margin, abs=2e-2)
    assert kept > 0
    assert result.summary["calibrated"]["target_source"] == "cross-fitted"
    assert result.method["targets"]["source"] == "cross-fitted"


def test_calibrated_without_preparation_uses_held_out_statistics(work: DigitsWork) -> None:
    result = unlearn(
        work.raw,
        work.x_train,
        work.y_train,
        forget_indices=FORGET,
        x_test=work.x_test,
        y_test=work.y_test,
        target_policy="calibrated",
    )
    assert result.complete
    assert {c.source for c in result.claims if isinstance(c, CalibratedClaim)} == {
        "class-conditional"
    }
    with pytest.raises(PatchError, match="needs prepared reference models"):
        unlearn(
            work.raw, work.x_train, work.y_train, forget_indices=FORGET, target_policy="calibrated"
        )
    with pytest.raises(PatchError, match="sample deletion"):
        unlearn(
            work.raw,
            work.x_train,
            work.y_train,
            forget_class=3,
            x_test=work.x_test,
            y_test=work.y_test,
            target_policy="calibrated",
        )


def test_prepare_and_calibrated_unlearn_cli(work: DigitsWork, tmp_path: Path) -> None:
    recipe = {
        "config": {
            "arch": "mlp",
            "hidden": [16, 16],
            "epochs": 2,
            "batch_size": 128,
            "lr": 0.001,
            "weight_decay": 0.0,
            "seed": 0,
        },
        "input_shape": [64],
        "classes": 10,
    }
    (tmp_path / "train.json").write_text(json.dumps(recipe))
    runner = CliRunner()
    args = [
        "prepare",
        str(work.model_path),
        "--train",
        str(work.folder / "train.npz"),
        "--test",
        str(work.folder / "test.npz"),
        "--recipe",
        str(tmp_path / "train.json"),
        "--folds",
        "2",
        "--out",
        str(tmp_path / "prep"),
    ]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["folds"] == 2 and manifest["version"] == 1
    (tmp_path / "f.txt").write_text("3\n7\n12\n")
    res = runner.invoke(
        cli,
        [
            "unlearn",
            str(work.model_path),
            "--train",
            str(work.folder / "train.npz"),
            "--forget-indices",
            str(tmp_path / "f.txt"),
            "--prepared",
            str(tmp_path / "prep"),
            "--out",
            str(tmp_path / "P"),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "P" / "summary.json").read_text())
    assert summary["certified"] == 3  # --prepared alone: the default policy is calibrated
    assert summary["method"]["target_policy"] == "calibrated"
    assert summary["method"]["targets"] == {
        "source": "cross-fitted",
        "calibration": "temperature",
        "folds": 2,
        "tolerance": DEFAULT_TOLERANCE,
    }
    # --prepared with another policy, and a folder prepared elsewhere, are usage errors
    res = runner.invoke(
        cli,
        [
            "unlearn",
            str(work.model_path),
            "--train",
            str(work.folder / "train.npz"),
            "--forget-indices",
            str(tmp_path / "f.txt"),
            "--target-policy",
            "runner-up",
            "--prepared",
            str(tmp_path / "prep"),
            "--out",
            str(tmp_path / "Q"),
        ],
    )
    assert res.exit_code == 2 and "only used with" in res.output
    res = runner.invoke(cli, args)
    assert res.exit_code == 2 and "not empty" in res.output


def test_default_policy_is_calibrated_only_with_prepared_references() -> None:
    from prune.targets import default_policy

    assert default_policy(prepared=True) == "calibrated"
    assert default_policy(prepared=False) == "runner-up"


def test_points_sharing_a_region_with_another_label_get_a_sound_bound(work: DigitsWork) -> None:
    """Two forget points in one linear region with different labels: one patch, flat for the
    first label; the other point's claim carries its own (looser) bound, which still holds."""
    head = load_model(work.raw).head
    _, z = head.forward(work.x_train.astype(np.float64))
    seen: dict[bytes, int] = {}
    pair = None
    for row, key in enumerate(np.packbits(z >= 0, axis=1)):
        first = seen.setdefault(key.tobytes(), row)
        if first != row and work.y_train[first] != work.y_train[row]:
            pair = [first, row]
            break
    assert pair is not None, "the tiny model has no shared region with two labels"
    result = unlearn(
        work.raw,
        work.x_train,
        work.y_train,
        forget_indices=pair,
        x_test=work.x_test,
        y_test=work.y_test,
        target_policy="calibrated",
    )
    assert result.complete and result.summary["patches"] == 1
    logits = OrtRunner(result.patched_model, outputs=[OUTPUT]).run(result.forget_x)[0]
    for claim in result.claims:
        assert isinstance(claim, CalibratedClaim)
        row = logits[claim.leaf_index]
        assert row[claim.label] - row[claim.rival] <= claim.upper_margin


def test_auto_gate_routes_calibrated_patches_from_the_threshold(work: DigitsWork) -> None:
    """``--gate auto`` resolves on the number of calibrated patches (distinct regions), as for
    the other policies: the tree gate from ``ROUTED_FROM`` on, activation below."""
    many = np.arange(2 * ROUTED_FROM, dtype=np.int64)
    results = {
        len(idx): unlearn(
            work.raw,
            work.x_train,
            work.y_train,
            forget_indices=idx,
            x_test=work.x_test,
            y_test=work.y_test,
            target_policy="calibrated",
        )
        for idx in (FORGET, many)
    }
    few, lots = results[len(FORGET)], results[len(many)]
    assert few.method["gate"] == "activation"
    assert lots.summary["patches"] >= ROUTED_FROM and lots.method["gate"] == "tree"
    assert lots.complete and lots.summary["certified"] == len(many)


@pytest.mark.parametrize("tolerance", [0.5, 3.0, 1e6])
def test_calibrated_tolerance_bounds_the_rise_over_the_target_margin(
    work: DigitsWork, tolerance: float
) -> None:
    """With a tolerance the patch cancels only part of the margin's slope: the output at the
    sample is still the target, the stated bound is at most ``target margin + tolerance`` plus
    the float32 slack, and the bound holds at points of the region. A huge tolerance leaves the
    slope alone (a constant patch, ``C = 0``)."""
    imported = load_model(work.raw)
    head = imported.head
    box = declare_box(imported, work.x_train)
    x = work.x_train[FORGET].reshape(len(FORGET), -1).astype(np.float64)
    logits, z = head.forward(x)
    labels = work.y_train[FORGET].astype(np.int64)
    targets = logits.copy()
    targets[np.arange(len(x)), labels] -= 2.0  # a less confident out-model
    slack = np.full(len(x), 1e-3)
    sol = calibrated_patches(head, box, x, z >= 0, labels, targets, slack, tolerance=tolerance)
    rows = np.arange(len(x))
    out = logits + np.einsum("bi,bio->bo", x, sol.C) + sol.d
    np.testing.assert_allclose(out, targets, atol=1e-3)
    assert (sol.bound <= sol.target_margin + tolerance + slack + 1e-5).all()  # float32 C, lam
    assert (sol.certified_upper >= sol.target_margin - 1e-9).all()
    if tolerance > 1e5:
        assert (sol.alpha == 0).all() and not sol.C.any()
    rng = np.random.default_rng(0)
    for i in rows:
        pts = np.clip(x[i] + rng.normal(scale=0.05, size=(200, x.shape[1])), box.low, box.high)
        f, zp = head.forward(pts)
        inside = (np.asarray(zp >= 0) == (z[i] >= 0)).all(axis=1)
        margin = (f + pts @ sol.C[i] + sol.d[i]) @ (
            np.eye(head.classes)[labels[i]] - np.eye(head.classes)[sol.rival[i]]
        )
        assert (margin[inside] <= sol.certified_upper[i] + 1e-9).all()


def test_guard_raises_the_tolerance_only_where_retained_rows_would_move(work: DigitsWork) -> None:
    """Patches with a small tolerance move some retained training rows that share a region with a
    forgotten one to another class; the guard re-solves exactly those patches with a larger
    tolerance, moves no more rows anywhere and fewer in total, and leaves the other patches
    as they were."""
    from prune.unlearn._calibrated import _guarded_patches, _moved

    imported = load_model(work.raw)
    head = imported.head
    box = declare_box(imported, work.x_train)
    forget = np.arange(2 * ROUTED_FROM, dtype=np.int64)
    x = work.x_train.reshape(len(work.x_train), -1).astype(np.float64)
    logits, z = head.forward(x[forget])
    labels = work.y_train[forget].astype(np.int64)
    keys = np.unique(np.packbits(z >= 0, axis=1), axis=0, return_index=True)[1]
    rep = np.sort(keys)
    targets = logits[rep].copy()  # the sample keeps its output: only the slope acts
    slack = np.full(len(rep), 1e-3)
    points = type("P", (), {"x": x[forget], "active": z >= 0})()
    retained = np.delete(x, forget, axis=0)
    args = (head, box, points, rep, labels[rep], targets, slack)
    plain = _guarded_patches(*args, tolerance=0.5, retained=None)
    guarded = _guarded_patches(*args, tolerance=0.5, retained=retained)
    flat = _guarded_patches(*args, tolerance=0.0, retained=retained)
    assert (flat.alpha == 1.0).all()  # flat was asked for: never relaxed
    r_logits, r_z = head.forward(retained)
    index = {np.packbits(a).tobytes(): i for i, a in enumerate(z[rep] >= 0)}
    patch = np.array([index.get(np.packbits(a).tobytes(), -1) for a in r_z >= 0])
    inside = patch >= 0
    order = np.argsort(patch[inside], kind="stable")
    rx, rp = retained[inside][order], patch[inside][order]
    pred = r_logits[inside][order].argmax(axis=1)
    every = np.arange(len(rep), dtype=np.int64)
    before = _moved(head, plain, every, rx, rp, pred)
    after = _moved(head, guarded, every, rx, rp, pred)
    assert before.sum() > 0, "the tiny model has no retained row that a flat patch moves"
    assert (after <= before).all() and after.sum() < before.sum()
    same = before == 0
    np.testing.assert_array_equal(guarded.C[same], plain.C[same])
    assert (guarded.alpha[~same] <= plain.alpha[~same]).all()


@pytest.mark.parametrize("block", [4, 32])
def test_guard_screening_finds_exactly_the_rows_that_share_a_region(
    work: DigitsWork, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard's region lookup screens the first layer block by block: it must give every
    row the region the whole-head pass gives it (retained rows that share a forget region,
    copies of forgotten rows, rows in no region) and the original logits of the matched rows."""
    from prune.unlearn import _calibrated

    monkeypatch.setattr(_calibrated, "_SCREEN_BLOCK", block)
    head = load_model(work.raw).head
    x = work.x_train.reshape(len(work.x_train), -1).astype(np.float64)
    forget = np.arange(2 * ROUTED_FROM, dtype=np.int64)
    active = head.forward(x[forget])[1] >= 0
    rows = np.concatenate([np.delete(x, forget, axis=0), x[forget[::7]]])
    patch, logits = _calibrated._regions_of_rows(head, rows, active)
    full_logits, z = head.forward(rows)
    index = {np.packbits(a).tobytes(): i for i, a in enumerate(active)}
    expected = np.array([index.get(np.packbits(a).tobytes(), -1) for a in z >= 0])
    np.testing.assert_array_equal(patch, expected)
    assert (expected[-len(forget[::7]) :] >= 0).all()  # the copies are found
    assert (expected >= 0).sum() > len(forget[::7])  # and retained rows too
    np.testing.assert_allclose(logits, full_logits[expected >= 0], rtol=0, atol=1e-9)
    none, no_logits = _calibrated._regions_of_rows(head, rows[:0], active)
    assert none.shape == (0,) and no_logits.shape == (0, head.classes)
