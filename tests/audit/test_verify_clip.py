"""The verifier on a Clip head (torch's Hardtanh and ReLU6, exported by the legacy exporter and
cut at the input by default): the honest proof verifies with the exact certificate covering the
Clip's two breakpoints; a dishonest owner who gates on other breakpoints than the graph's Clip
bounds, or whose region certificate drops the Clip's upper breakpoint rows, fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from audit.cli import cli as audit_cli
from prune.cli import cli as prune_cli
from prune.formats import sha256_hex
from prune.model import OrtRunner, load_model
from tests.audit.adversarial.registry import edit_certificate, resign_model
from tests.zoo._models import ZOO, digits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip_proof(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clip")
    data = digits()
    model = next(m for m in ZOO if m.name == "leg_hardtanh")
    path, _ = model.export(data, root / "model")
    x_train = data.x_train.reshape(len(data.x_train), -1)
    np.savez(root / "train.npz", x=x_train, y=data.y_train)
    np.savez(root / "test.npz", x=data.x_test.reshape(len(data.x_test), -1), y=data.y_test)
    keys = CliRunner().invoke(prune_cli, ["keygen", "--out", str(root / "keys"), "--no-passphrase"])
    assert keys.exit_code == 0, keys.output
    (logits,) = OrtRunner(path.read_bytes(), outputs=["y"]).run(x_train)
    correct = np.flatnonzero(logits.argmax(axis=1) == data.y_train)
    forget = np.random.default_rng(2).choice(correct, size=3, replace=False)
    (root / "forget.txt").write_text("".join(f"{i}\n" for i in forget))
    result = CliRunner().invoke(
        prune_cli,
        [
            "unlearn", str(path), "--train", str(root / "train.npz"), "--test",
            str(root / "test.npz"), "--forget-indices",
            str(root / "forget.txt"), "--key", str(root / "keys" / "owner.key"),
            "--out", str(root / "proof"), "--quiet",
            # ascent steps, so that the bound leans on the Clip's cap rows (the default's
            # bound-propagation multipliers barely use them: zeroing them loses no claim)
            "--solver-steps", "6",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


def _verify(root: Path, proof: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    out = proof.parent / "verify.json"
    result = CliRunner().invoke(
        audit_cli,
        [
            "verify", str(proof), "--public-key", str(root / "keys" / "owner.pub"),
            "--original", str(root / "model" / "model.onnx"), "--forget",
            str(proof / "forget.npz"), "--reference", str(root / "test.npz"),
            "--json", str(out), "--quiet",
        ],
    )  # fmt: skip
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    return result.exit_code, checks


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root / "proof", tmp_path / "proof"))


def test_honest_clip_proof_verifies_with_the_exact_certificate(clip_proof: Path) -> None:
    code, checks = _verify(clip_proof, clip_proof / "proof")
    assert code == 0, {k: c["detail"] for k, c in checks.items() if c["status"] == "fail"}
    for name in ("structure.patch", "region.certificate", "region.probes", "locality"):
        assert checks[name]["status"] == "pass", checks[name]
    assert "exact LP" in checks["region.probes"]["detail"]


def test_gate_on_a_moved_clip_bound_fails_the_structure_check(
    clip_proof: Path, tmp_path: Path
) -> None:
    """The owner gates on ``t - 0.5`` instead of the graph's ``t - 1`` (a region the Clip does
    not have) and re-signs: the verifier rebuilds the gate from its own reading of the Clip."""
    proof = _copy(clip_proof, tmp_path)
    model = onnx.load(proof / "model.onnx")
    moved = 0
    for init in model.graph.initializer:
        if init.name.startswith("prune/patch/z") and init.name.endswith("/offset"):
            value = float(numpy_helper.to_array(init))
            if value == 1.0:
                init.CopyFrom(numpy_helper.from_array(np.float32(0.5), name=init.name))
                moved += 1
    assert moved == 1
    resign_model(proof, model.SerializeToString(), key=clip_proof / "keys" / "owner.key")
    code, checks = _verify(clip_proof, proof)
    assert code == 1
    assert checks["structure.patch"]["status"] == "fail", checks["structure.patch"]


def test_certificate_without_the_clip_upper_rows_fails(clip_proof: Path, tmp_path: Path) -> None:
    """The owner's multipliers on the Clip's ``t - max`` units zeroed (a certificate that
    treats Relu6/Hardtanh as a Relu), re-signed with the new file digest: the bound no longer
    proves the claims over their regions."""
    proof = _copy(clip_proof, tmp_path)
    head = load_model((clip_proof / "model" / "model.onnx").read_bytes()).head
    names = list(dict.fromkeys(head.hidden))
    x = np.zeros((1, head.input_dim), np.float32)
    widths = dict(
        zip(names, (o.shape[1] for o in OrtRunner(
            (clip_proof / "model" / "model.onnx").read_bytes(), outputs=names
        ).run(x)), strict=True)
    )  # fmt: skip
    upper = np.zeros(head.n_hidden, dtype=bool)
    start = 0
    for i, name in enumerate(head.hidden):
        if i > 0 and head.hidden[i - 1] == name:  # the second unit of a Clip input: t - max
            upper[start : start + widths[name]] = True
        start += widths[name]
    assert start == head.n_hidden and upper.any()
    duals = np.frombuffer((proof / "certificate.dual").read_bytes(), dtype="<f4").copy()
    duals = duals.reshape(-1, head.n_hidden)
    assert np.abs(duals[:, upper]).sum() > 0  # the honest certificate uses those rows
    duals[:, upper] = 0.0
    data = duals.astype("<f4").tobytes()
    (proof / "certificate.dual").write_bytes(data)

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["region_certificate"]["sha256"] = sha256_hex(data)

    edit_certificate(proof, edit, key=clip_proof / "keys" / "owner.key")
    code, checks = _verify(clip_proof, proof)
    assert code == 1
    assert checks["region.certificate"]["status"] == "fail", checks["region.certificate"]
