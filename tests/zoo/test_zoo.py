"""Bring your own model: every zoo model (tests/zoo/_models.py, exported by the real exporters
at test time) unlearns with *default* options through the CLI, verifies with ``audit verify``
exit 0, and an independent onnxruntime check sees the forget predictions changed, test accuracy
within one point, the served outputs consistent with the patched logits (same names), and the
original outputs equal to the framework's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from numpy.typing import NDArray

from audit.cli import cli as audit_cli
from prune.cli import cli as prune_cli
from prune.model import load_model, read_model
from tests.zoo._models import ZOO, Digits, ZooModel, digits

_CONV = ("cnn", "resnet")
FORGET = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Digits]:
    root = tmp_path_factory.mktemp("zoo")
    data = digits()
    np.savez(root / "train.npz", x=data.x_train.reshape(len(data.x_train), -1), y=data.y_train)
    np.savez(root / "test.npz", x=data.x_test.reshape(len(data.x_test), -1), y=data.y_test)
    keys = CliRunner().invoke(prune_cli, ["keygen", "--out", str(root / "keys"), "--no-passphrase"])
    assert keys.exit_code == 0, keys.output
    return root, data


def _session(path: Path | bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    src = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def _label(session: ort.InferenceSession, x: NDArray[np.float32]) -> NDArray[np.int64]:
    """The served prediction: an integer output when the model has one (a label), else the
    argmax of the first output (logits or probabilities)."""
    outs = session.run(None, {session.get_inputs()[0].name: x})
    for meta, out in zip(session.get_outputs(), outs, strict=True):
        if meta.type == "tensor(int64)":
            return np.asarray(out, dtype=np.int64).reshape(-1)
    return np.asarray(outs[0]).argmax(axis=1)


def _params() -> list[object]:
    return [
        pytest.param(
            m, id=m.name, marks=[pytest.mark.slow] if any(k in m.name for k in _CONV) else []
        )
        for m in ZOO
    ]


def test_zoo_has_ten_models_from_three_exporters() -> None:
    assert len(ZOO) >= 10
    assert {m.exporter for m in ZOO} == {"dynamo", "legacy", "skl2onnx"}


@pytest.mark.parametrize("model", _params())
def test_unlearn_with_defaults_verifies(model: ZooModel, world: tuple[Path, Digits]) -> None:
    root, data = world
    folder = root / model.name
    path, framework = model.export(data, folder)
    x_train = data.x_train.reshape(len(data.x_train), -1)
    x_test = data.x_test.reshape(len(data.x_test), -1)
    original = _session(read_model(path)[0])  # a fixed batch freed, as `prune unlearn` does
    in_name = original.get_inputs()[0].name
    # the exported model computes what the framework computes
    first = np.asarray(original.run(None, {in_name: x_test[:64]})[0])
    if first.dtype.kind == "f":
        np.testing.assert_allclose(first, framework(x_test[:64]), rtol=1e-4, atol=1e-4)
    if any("inside the head" in c for c in model.covers):  # the default cut is before the join
        head = load_model(read_model(path)[0]).head
        assert any((head.slope(i) == 1.0).any() for i in range(len(head.hidden_sizes)))
    if any(c.startswith("Clip in the head") for c in model.covers):  # cut at the input
        head = load_model(read_model(path)[0]).head
        assert head.cut == in_name
        assert len(set(head.hidden)) < len(head.hidden)  # a Clip input: two units, t-min, t-max
    correct = np.flatnonzero(_label(original, x_train) == data.y_train)
    forget = np.random.default_rng(1).choice(correct, size=FORGET, replace=False)
    (folder / "forget.txt").write_text("".join(f"{i}\n" for i in forget))

    proof = folder / "proof"
    result = CliRunner().invoke(
        prune_cli,
        [
            "unlearn", str(path), "--train", str(root / "train.npz"), "--test",
            str(root / "test.npz"), "--forget-indices", str(folder / "forget.txt"),
            "--key", str(root / "keys" / "owner.key"), "--out", str(proof), "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    committed = proof / "original.onnx" if (proof / "original.onnx").exists() else path
    verify = CliRunner().invoke(
        audit_cli,
        [
            "verify", str(proof), "--public-key", str(root / "keys" / "owner.pub"),
            "--original", str(committed), "--forget", str(proof / "forget.npz"),
            "--reference", str(root / "test.npz"), "--json", str(folder / "verify.json"),
            "--quiet",
        ],
    )  # fmt: skip
    doc = json.loads((folder / "verify.json").read_text())
    failed = [c for c in doc["checks"] if c["status"] == "fail"]
    assert verify.exit_code == 0, failed
    status = {c["name"]: c["status"] for c in doc["checks"]}
    assert status["structure.tail"] == "pass"  # the exporter's tail is proved faithful

    # independent onnxruntime check on the served model
    patched = _session(proof / "model.onnx")
    names = [o.name for o in original.get_outputs()]
    served = [o.name for o in patched.get_outputs()]
    assert [n for n in served if n != "prune/output"] == [n for n in names if n in served]
    after = _label(patched, x_train[forget])
    assert (after != data.y_train[forget]).all()
    acc_before = float((_label(original, x_test) == data.y_test).mean())
    acc_after = float((_label(patched, x_test) == data.y_test).mean())
    assert acc_after >= acc_before - 0.01
    outs = dict(zip(served, patched.run(None, {in_name: x_test[:64]}), strict=True))
    logits = np.asarray(outs["prune/output"], dtype=np.float64)
    _consistent_tail(outs, logits)


def _consistent_tail(outs: dict[str, object], logits: NDArray[np.float64]) -> None:
    """Every served output is recomputed from the patched logits: probabilities are their
    softmax, labels their argmax."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    for name, out in outs.items():
        if name == "prune/output":
            continue
        if isinstance(out, list):  # ZipMap: a list of {class: probability}
            got = np.asarray([[row[k] for k in sorted(row)] for row in out])
            np.testing.assert_allclose(got, probs, rtol=1e-4, atol=1e-5)
            continue
        arr = np.asarray(out)
        if arr.dtype.kind in "iu":
            np.testing.assert_array_equal(arr.reshape(-1), logits.argmax(axis=1))
        else:
            np.testing.assert_allclose(arr, probs, rtol=1e-4, atol=1e-5)


_TAILED = [m for m in ZOO if m.name in ("skl_mlp", "leg_prelu")]


@pytest.mark.parametrize("model", [pytest.param(m, id=m.name) for m in _TAILED])
def test_class_suppression_of_a_tailed_model_verifies(
    model: ZooModel, world: tuple[Path, Digits]
) -> None:
    """Softmax / ArgMax / ZipMap tails: the suppression (form v2) acts on the logits before the
    tail, the served outputs keep their names and never give the class, ``audit verify`` exits 0
    with ``class.suppression`` passed."""
    root, data = world
    folder = root / f"{model.name}-class"
    path, _ = model.export(data, folder)
    proof = folder / "proof"
    result = CliRunner().invoke(
        prune_cli,
        [
            "unlearn", str(path), "--train", str(root / "train.npz"), "--test",
            str(root / "test.npz"), "--forget-class", str(FORGET),
            "--key", str(root / "keys" / "owner.key"), "--out", str(proof), "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    committed = proof / "original.onnx" if (proof / "original.onnx").exists() else path
    verify = CliRunner().invoke(
        audit_cli,
        [
            "verify", str(proof), "--public-key", str(root / "keys" / "owner.pub"),
            "--original", str(committed), "--forget", str(proof / "forget.npz"),
            "--reference", str(root / "test.npz"), "--json", str(folder / "verify.json"),
            "--quiet",
        ],
    )  # fmt: skip
    doc = json.loads((folder / "verify.json").read_text())
    checks = {c["name"]: c for c in doc["checks"]}
    assert verify.exit_code == 0, [c for c in doc["checks"] if c["status"] == "fail"]
    assert checks["class.suppression"]["status"] == "pass"
    assert checks["class.reference"]["status"] == "pass"
    original, patched = _session(path), _session(proof / "model.onnx")
    names = [o.name for o in original.get_outputs()]
    served = [o.name for o in patched.get_outputs()]
    assert [n for n in served if n != "prune/output"] == names
    x_test = data.x_test.reshape(len(data.x_test), -1)
    assert not (_label(patched, x_test) == FORGET).any()
    in_name = patched.get_inputs()[0].name
    outs = dict(zip(served, patched.run(None, {in_name: x_test[:64]}), strict=True))
    _consistent_tail(outs, np.asarray(outs["prune/output"], dtype=np.float64))


def test_tailed_model_report_and_receipt(world: tuple[Path, Digits], tmp_path: Path) -> None:
    """``audit report`` and ``audit receipt`` read the declared logits (``prune/output`` of the
    patched model, the Softmax input of the original), not the first graph output: the
    skl2onnx model serves ``label`` first, then the probabilities."""
    root, data = world
    model = next(m for m in ZOO if m.exporter == "skl2onnx")
    path, _ = model.export(data, tmp_path / "model")
    x_train = data.x_train.reshape(len(data.x_train), -1)
    original = _session(path)
    assert original.get_outputs()[0].type == "tensor(int64)"  # the label comes first
    correct = np.flatnonzero(_label(original, x_train) == data.y_train)
    forget = np.random.default_rng(2).choice(correct, size=FORGET, replace=False)
    (tmp_path / "forget.txt").write_text("".join(f"{i}\n" for i in forget))
    proof = tmp_path / "proof"
    keys = root / "keys"
    result = CliRunner().invoke(
        prune_cli,
        [
            "unlearn", str(path), "--train", str(root / "train.npz"), "--test",
            str(root / "test.npz"), "--forget-indices", str(tmp_path / "forget.txt"), "--key", str(keys / "owner.key"), "--out", str(proof),
            "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    report = CliRunner().invoke(
        audit_cli,
        [
            "report", str(proof), "--public-key", str(keys / "owner.pub"), "--original",
            str(path), "--forget", str(proof / "forget.npz"), "--reference",
            str(root / "test.npz"), "--mia", "none", "--out", str(tmp_path / "report"),
            "--quiet",
        ],
    )  # fmt: skip
    assert report.exit_code == 0, report.output
    per_class = json.loads((tmp_path / "report" / "report.json").read_text())["per_class"]
    x_test = data.x_test.reshape(len(data.x_test), -1)
    patched = _session(proof / "model.onnx")
    for key, session in (("overall_original", original), ("overall_patched", patched)):
        expected = float((_label(session, x_test) == data.y_test).mean())
        assert per_class[key] == pytest.approx(expected), key

    openings = np.load(proof / "forget.npz")
    leaf = int(openings["leaf_index"][0])
    np.save(tmp_path / "x.npy", openings["x"][0])
    label = int(openings["y"][0])
    receipt = [
        "receipt", str(proof / "receipts" / f"receipt-{leaf}.json"), "--certificate",
        str(proof / "certificate.json"), "--public-key", str(keys / "owner.pub"), "--sample",
        str(tmp_path / "x.npy"), "--model", str(proof / "model.onnx"), "--quiet",
    ]  # fmt: skip
    ok = CliRunner().invoke(audit_cli, [*receipt, "--label", str(label)])
    assert ok.exit_code == 0, ok.output
    wrong = CliRunner().invoke(audit_cli, [*receipt, "--label", str((label + 1) % 10)])
    assert wrong.exit_code == 1, wrong.output


def test_one_logit_binary_classifier_is_refused_by_name(
    world: tuple[Path, Digits], tmp_path: Path
) -> None:
    """skl2onnx exports a two-class MLPClassifier as one logit, a Sigmoid and ``[1 - p, p]``:
    no cut exists, and the refusal says why in one line instead of "cut after it"."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    _, data = world
    keep = data.y_train < 2
    x = data.x_train[keep].reshape(int(keep.sum()), -1)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, data.y_train[keep])
    path = tmp_path / "binary.onnx"
    path.write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    result = CliRunner().invoke(prune_cli, ["inspect", str(path)])
    assert result.exit_code != 0
    line = result.output.strip()
    assert "\n" not in line and "one-logit binary classifier" in line, result.output
    assert "cut after it" not in line
