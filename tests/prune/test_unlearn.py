from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnx import helper

from prune.cli import cli
from prune.export import OUTPUT
from prune.model import OrtRunner
from prune.regions import Regions
from prune.solvers import SOLVERS, LagrangianSolver, PatchSolution
from prune.unlearn import UnlearnResult, unlearn
from tests.prune._engine_models import DigitsWork, digits_work, graph_model

SUMMARY_KEYS = {
    "forget_accuracy_before",
    "forget_accuracy_after",
    "retain_accuracy_before",
    "retain_accuracy_after",
    "test_accuracy_before",
    "test_accuracy_after",
    "patches",
    "certified",
    "seconds",
    "peak_rss_mb",
}


@pytest.fixture(scope="module")
def work() -> DigitsWork:
    return digits_work()


def _claims_hold(result: UnlearnResult) -> None:
    """Every claim holds on the exported model under onnxruntime, in leaf order."""
    logits = OrtRunner(result.patched_model, outputs=[OUTPUT]).run(result.forget_x)[0]
    for claim in result.claims:
        row = logits[claim.leaf_index].astype(np.float64)
        assert row.argmax() == claim.target != claim.label
        others = np.delete(row, claim.target)
        assert row[claim.target] - others.max() >= claim.certified_margin
        assert claim.region == "certified"
        assert claim.train_index == result.forget_indices[claim.leaf_index]


def _run(args: list[str]) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, args)
    return res.exit_code, res.stdout, res.stderr


def test_sample_unlearning_cli(work: DigitsWork, tmp_path: Path) -> None:
    forget = tmp_path / "forget.txt"
    forget.write_text("12\n3\n\n40\n7\n")
    out = tmp_path / "proof"
    code, stdout, stderr = _run(
        [
            "unlearn", str(work.model_path), "--train", str(work.folder / "train.npz"),
            "--test", str(work.folder / "test.npz"), "--forget-indices", str(forget),
            "--out", str(out), "--quiet", "--threads", "1",
        ]
    )  # fmt: skip
    assert code == 0, stderr
    assert "forgot 4 samples" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "summary.json"]
    assert not out.with_name("proof.partial").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["version"] == 1 and summary["mode"] == "samples"
    assert summary["forget_accuracy_after"] == 0.0 and summary["certified"] == 4
    assert summary["failed"] == [] and summary["method"]["solver"] == "lagrangian"
    assert abs(summary["test_accuracy_after"] - summary["test_accuracy_before"]) <= 0.02


@pytest.mark.parametrize(
    ("strategy", "solver", "gate", "policy"),
    [
        ("individual", "lagrangian", "dense", "random"),
        ("clustered", "lagrangian", "activation", "runner-up"),
        ("individual", "scale-shift", "activation", "least-likely"),
    ],
)
def test_multi_point_unlearning(
    work: DigitsWork, strategy: str, solver: str, gate: str, policy: str
) -> None:
    idx = np.random.default_rng(0).choice(len(work.y_train), 12, replace=False)
    result = unlearn(
        work.raw,
        work.x_train,
        work.y_train,
        forget_indices=idx,
        solver=solver,
        gate=gate,
        target_policy=policy,
        strategy=strategy,
        threads=1,
    )
    _claims_hold(result)
    assert [c.leaf_index for c in result.claims] == sorted(set(range(12)) - set(result.failed))
    assert len(result.claims) == 12 and result.complete
    assert result.summary["forget_accuracy_after"] == 0.0
    assert result.method["strategy"] == strategy and result.method["gate"] == gate


def test_class_unlearning_cli(work: DigitsWork, tmp_path: Path) -> None:
    out = tmp_path / "proof"
    code, _, stderr = _run(
        [
            "unlearn", str(work.model_path), "--train", str(work.folder / "train.npz"),
            "--test", str(work.folder / "test.npz"), "--forget-class", "4", "--out", str(out),
            "--quiet", "--threads", "1",
        ]
    )  # fmt: skip
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "class" and summary["forget_class"] == 4
    assert summary["forget_points"] == int((work.y_train == 4).sum())
    assert summary["forget_accuracy_after"] == 0.0
    assert summary["method"]["forget_class"] == 4
    assert set(summary["per_class_test_accuracy_after"]) == {str(k) for k in range(10)}


def test_signed_proof(work: DigitsWork, tmp_path: Path) -> None:
    from prune.proofs import generate_keys

    keys = generate_keys(tmp_path / "keys")
    forget = tmp_path / "f.txt"
    forget.write_text("5\n9\n")
    out = tmp_path / "proof"
    code, _, stderr = _run(
        [
            "unlearn", str(work.model_path), "--train", str(work.folder / "train.npz"),
            "--forget-indices", str(forget), "--key", str(keys.private_key), "--out", str(out),
            "--quiet", "--threads", "1",
        ]
    )  # fmt: skip
    assert code == 0, stderr
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "summary.json", "certificate.json", "model.sig", "forget.npz"} <= names
    assert len(list((out / "receipts").iterdir())) == 2


@dataclass(frozen=True)
class _FlakySolver:
    """Claims the margin but returns no patch on its first call; honest afterwards."""

    name: ClassVar[str] = "lagrangian"
    needs_dense: ClassVar[bool] = False
    calls: list[int]

    def options(self) -> dict[str, float | int | str]:
        return {}

    def solve(
        self, regions: Regions, targets: torch.Tensor, *, margin: torch.Tensor
    ) -> PatchSolution:
        self.calls.append(len(regions))
        if len(self.calls) == 1:
            return PatchSolution(C=None, d=torch.zeros_like(regions.F2), certified_margin=margin)
        return LagrangianSolver().solve(regions, targets, margin=margin)


def test_recheck_catches_wrong_patches(work: DigitsWork, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    # the pipeline passes the lagrangian entry its ascent steps
    monkeypatch.setitem(SOLVERS, "lagrangian", lambda **_: _FlakySolver(calls))  # type: ignore[arg-type]
    result = unlearn(work.raw, work.x_train, work.y_train, forget_indices=[1, 2, 3], threads=1)
    assert len(calls) == 2 and result.summary["resolved_after_recheck"] == 3
    assert result.complete
    _claims_hold(result)
    monkeypatch.setattr("prune.unlearn._pipeline.RETRIES", 0)
    calls.clear()
    result = unlearn(work.raw, work.x_train, work.y_train, forget_indices=[1, 2, 3], threads=1)
    assert result.claims == () and result.failed == (0, 1, 2)
    assert result.summary["certified"] == 0


def _bad_model(tmp_path: Path, op: str) -> Path:
    w = np.ones((10, 64), dtype=np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "w"], ["h"], name="dense", transB=1),
        helper.make_node(op, ["h"], ["logits"], name="act"),
    ]
    path = tmp_path / f"{op}.onnx"
    path.write_bytes(
        graph_model(
            nodes, {"w": w}, inputs=("input", ["batch", 64]), output=("logits", ["batch", 10])
        )
    )
    return path


def _npz(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(path, x=x, y=y)
    return path


BAD = [
    ("unsupported-op", "unsupported op Abs (Abs node 'act')"),
    ("sigmoid", "non-piecewise-linear activation Sigmoid (Sigmoid node 'act')"),
    ("out-of-range", "forget index 100000 is out of range"),
    ("duplicate", "forget index 3 is listed more than once"),
    ("empty", "lists no forget indices"),
    ("not-integer", "not an integer: 'x3'"),
    ("class-absent", "class 3 does not occur in the training data"),
    ("class-unknown", "class 12 is not a class of the model"),
    ("shape", "the model expects (64,)"),
    ("nan", "contains NaN or inf"),
    ("missing-model", "nope.onnx does not exist"),
    ("not-onnx", "not an ONNX model"),
    ("out-exists", "exists and is not empty"),
    ("no-request", "give exactly one of --forget-indices FILE and --forget-class K"),
]


@pytest.mark.parametrize(("case", "message"), BAD, ids=[c for c, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    work: DigitsWork, tmp_path: Path, case: str, message: str
) -> None:
    model = work.model_path
    train = work.folder / "train.npz"
    forget = tmp_path / "forget.txt"
    forget.write_text("3\n5\n")
    request = ["--forget-indices", str(forget)]
    out = tmp_path / "proof"
    if case == "unsupported-op":
        model = _bad_model(tmp_path, "Abs")
    elif case == "sigmoid":
        model = _bad_model(tmp_path, "Sigmoid")
    elif case == "out-of-range":
        forget.write_text("3\n100000\n")
    elif case == "duplicate":
        forget.write_text("3\n5\n3\n")
    elif case == "empty":
        forget.write_text("\n")
    elif case == "not-integer":
        forget.write_text("1\nx3\n")
    elif case == "class-absent":
        keep = work.y_train != 3
        train = _npz(tmp_path / "t.npz", work.x_train[keep], work.y_train[keep])
        request = ["--forget-class", "3"]
    elif case == "class-unknown":
        request = ["--forget-class", "12"]
    elif case == "shape":
        train = _npz(tmp_path / "t.npz", work.x_train[:, :32], work.y_train)
    elif case == "nan":
        x = work.x_train.copy()
        x[4, 7] = np.nan
        train = _npz(tmp_path / "t.npz", x, work.y_train)
    elif case == "missing-model":
        model = tmp_path / "nope.onnx"
    elif case == "not-onnx":
        model = tmp_path / "junk.onnx"
        model.write_bytes(b"\x08\x07junk that is not a model\xff" * 10)
    elif case == "out-exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "no-request":
        request = []
    code, stdout, stderr = _run(
        ["unlearn", str(model), "--train", str(train), *request, "--out", str(out), "--quiet"]
    )
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("prune: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert "Traceback" not in stdout + stderr
    assert not out.with_name("proof.partial").exists()
    if case == "out-exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_declared_box_skips_the_training_pass_and_verifies(tmp_path: Path) -> None:
    """``--box`` (an earlier proof's ``method.input_box``) gives the same patches as the box
    taken from the training data, and ``audit verify`` accepts the proof;
    ``--no-retained-accuracy`` reports the forget rows and the test data only. A box that
    leaves a forget sample out, a malformed one and either option on a class deletion are
    one-line refusals that write nothing."""
    from audit.cli import cli as audit_cli

    cnn = digits_work("cnn")
    forget = tmp_path / "f.txt"
    forget.write_text("2\n11\n5\n")
    keys = tmp_path / "keys"
    assert _run(["keygen", "--out", str(keys), "--no-passphrase"])[0] == 0
    base = ["unlearn", str(cnn.model_path), "--train", str(cnn.folder / "train.npz")]
    base += ["--test", str(cnn.folder / "test.npz"), "--quiet", "--threads", "1"]
    sample = [*base, "--forget-indices", str(forget)]
    code, _, stderr = _run([*sample, "--out", str(tmp_path / "p1")])
    assert code == 0, stderr
    first = json.loads((tmp_path / "p1" / "summary.json").read_text())
    low, high = first["method"]["input_box"]["low"], first["method"]["input_box"]["high"]
    declared = [*sample, "--box", f"{low},{high}", "--no-retained-accuracy"]
    out = tmp_path / "p2"
    code, _, stderr = _run([*declared, "--key", str(keys / "owner.key"), "--out", str(out)])
    assert code == 0, stderr
    second = json.loads((out / "summary.json").read_text())
    assert second["method"]["input_box"] == {"low": low, "high": high, "source": "declared"}
    assert second["retained_accuracy_measured"] is False
    assert second["retain_accuracy_before"] is None and second["train_accuracy_after"] is None
    assert second["forget_accuracy_after"] == 0.0 and second["certified"] == 3
    assert second["test_accuracy_before"] == first["test_accuracy_before"]
    x = np.load(cnn.folder / "train.npz")["x"][:64]
    same = [
        OrtRunner((p / "model.onnx").read_bytes(), outputs=[OUTPUT]).run(x)[0]
        for p in (tmp_path / "p1", out)
    ]
    np.testing.assert_array_equal(same[0], same[1])
    verified = CliRunner().invoke(
        audit_cli,
        [
            "verify", str(out), "--public-key", str(keys / "owner.pub"),
            "--original", str(cnn.model_path), "--forget", str(out / "forget.npz"),
            "--reference", str(cnn.folder / "test.npz"), "--quiet",
        ],
    )  # fmt: skip
    assert verified.exit_code == 0, verified.output
    # a box that leaves the forget samples out: refused by the owner's side, nothing written
    narrow = f"{low},{float(low) + 1e-3 * (float(high) - float(low))}"
    code, _, stderr = _run([*sample, "--box", narrow, "--out", str(tmp_path / "p3")])
    assert code != 0 and "outside the declared input box" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "p3").exists()
    for bad in ("1", "2,1", "0,nan", "a,b", "-1e300,1e300"):
        code, _, stderr = _run([*sample, "--box", bad, "--out", str(tmp_path / "p4")])
        assert code != 0 and "--box" in stderr and stderr.count("\n") == 1, (bad, stderr)
        assert not (tmp_path / "p4").exists()
    whole = [*base, "--forget-class", "3", "--out", str(tmp_path / "p5")]
    for option in (["--box", "0,1"], ["--no-retained-accuracy"]):
        code, _, stderr = _run([*whole, *option])
        assert code != 0 and "--forget-indices" in stderr and stderr.count("\n") == 1
        assert not (tmp_path / "p5").exists()


def test_cnn_is_patched_in_feature_space(tmp_path: Path) -> None:
    cnn = digits_work("cnn")
    forget = tmp_path / "f.txt"
    forget.write_text("2\n11\n")
    base = ["unlearn", str(cnn.model_path), "--train", str(cnn.folder / "train.npz")]
    base += ["--forget-indices", str(forget), "--quiet", "--threads", "1"]
    code, _, stderr = _run([*base, "--out", str(tmp_path / "proof")])
    assert code == 0, stderr
    summary = json.loads((tmp_path / "proof" / "summary.json").read_text())
    assert summary["method"]["cut"] == "features"
    assert summary["method"]["input_box"]["source"] == "feature-range"
    assert summary["forget_accuracy_after"] == 0.0 and summary["certified"] == 2
    # a cut before the MaxPools puts them in the head (rewritten, committed as original.onnx)
    code, _, stderr = _run([*base, "--cut", "input", "--out", str(tmp_path / "p2")])
    assert code == 0, stderr
    pooled = json.loads((tmp_path / "p2" / "summary.json").read_text())
    assert pooled["method"]["cut"] == "input" and pooled["certified"] == 2
    assert (tmp_path / "p2" / "original.onnx").exists()
    code, _, stderr = _run([*base, "--cut", "no-such-tensor", "--out", str(tmp_path / "p3")])
    assert code == 2 and "no-such-tensor" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "p3").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (3, 5), (7, 11)])
def test_check_data_finds_any_non_finite_value(bad: float, where: tuple[int, int]) -> None:
    """The finiteness check reads min and max only: NaN propagates through both and an
    infinity is one of them, wherever it sits."""
    from prune.errors import DataError
    from prune.unlearn._request import check_data

    x = np.random.default_rng(0).random((8, 12)).astype(np.float32)
    y = np.zeros(8, dtype=np.int64)
    check_data(x, y, name="training data", input_shape=(12,))
    x[where] = bad
    with pytest.raises(DataError, match="training data: x contains NaN or inf"):
        check_data(x, y, name="training data", input_shape=(12,))


def test_thread_cap_covers_numpy_blas_and_is_restored() -> None:
    """``threads`` caps torch and numpy's BLAS pool for the call and restores both after."""
    import torch
    from threadpoolctl import threadpool_info

    from prune.unlearn._pipeline import _torch_threads

    def blas() -> list[int]:
        return [int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"]

    torch_before, blas_before = torch.get_num_threads(), blas()
    with _torch_threads(1):
        assert torch.get_num_threads() == 1
        assert all(n == 1 for n in blas())
    assert torch.get_num_threads() == torch_before and blas() == blas_before


def test_solver_steps_trade_the_push_for_time_and_are_refused_off_the_lagrangian(
    tmp_path: Path,
) -> None:
    """``--solver-steps 0`` certifies every claim with the box bound (a push at least as large
    as the default's) and records the steps in the summary; on another solver it is a one-line
    refusal that writes nothing."""
    mlp = digits_work("mlp")
    forget = tmp_path / "f.txt"
    forget.write_text("2\n11\n5\n")
    base = ["unlearn", str(mlp.model_path), "--train", str(mlp.folder / "train.npz")]
    base += ["--forget-indices", str(forget), "--quiet", "--threads", "1"]
    summaries = {}
    for steps in ("0", "6"):
        out = tmp_path / f"s{steps}"
        code, _, stderr = _run([*base, "--solver-steps", steps, "--out", str(out)])
        assert code == 0, stderr
        summaries[steps] = json.loads((out / "summary.json").read_text())
    assert summaries["0"]["method"]["solver_options"]["steps"] == 0
    assert summaries["0"]["certified"] == summaries["6"]["certified"] == 3
    assert summaries["0"]["patch_delta_mean"] >= summaries["6"]["patch_delta_mean"] - 1e-9
    out = tmp_path / "refused"
    refused = [*base, "--solver", "scale-shift", "--solver-steps", "2", "--out", str(out)]
    code, _, stderr = _run(refused)
    assert code != 0 and "--solver-steps" in stderr and stderr.count("\n") == 1, stderr
    assert not out.exists()
