"""End to end with the real owner side: ``prune train`` -> ``prune keygen`` ->
``prune unlearn --key`` -> ``audit verify`` / ``audit receipt`` (digits, tiny MLP, 6 points).

The proofs come from the patch engine itself, so these tests pin the contract between the two
sides (docs/FORMATS.md) rather than the verifier's own test kit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from audit.cli import cli as audit_cli
from prune.cli import cli as prune_cli
from tests.audit.adversarial.tampers import flip_byte, payload_of, resign_model

pytestmark = pytest.mark.slow

FORGET = (3, 17, 42, 99, 150, 512)
OTHER = (5, 23, 61, 200, 333, 640)


@dataclass(frozen=True)
class Real:
    root: Path
    work: Path
    keys: Path
    proof: Path
    dense: Path
    other: Path
    routed: Path
    tree: Path


def _prune(*args: str) -> None:
    result = CliRunner().invoke(
        prune_cli, [*args, "--quiet"] if args[0] != "keygen" else list(args)
    )
    assert result.exit_code == 0, result.output


def _unlearn(real_root: Path, name: str, rows: tuple[int, ...], *extra: str) -> Path:
    indices = real_root / f"{name}.txt"
    indices.write_text("".join(f"{r}\n" for r in rows))
    work = real_root / "work"
    _prune(
        "unlearn",
        str(work / "model.onnx"),
        "--train",
        str(work / "train.npz"),
        "--forget-indices",
        str(indices),
        "--test",
        str(work / "test.npz"),
        "--key",
        str(real_root / "keys" / "owner.key"),
        "--out",
        str(real_root / name),
        *extra,
    )
    return real_root / name


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Real:
    root = tmp_path_factory.mktemp("e2e")
    _prune(
        "train",
        "--dataset",
        "digits",
        "--arch",
        "mlp",
        "--hidden",
        "16,16",
        "--epochs",
        "20",
        "--out",
        str(root / "work"),
    )
    _prune("keygen", "--out", str(root / "keys"))
    return Real(
        root,
        root / "work",
        root / "keys",
        _unlearn(root, "proof", FORGET),
        _unlearn(root, "proof-dense", FORGET, "--gate", "dense"),
        _unlearn(root, "proof-other", OTHER),
        _unlearn(root, "proof-routed", FORGET, "--gate", "routed"),
        _unlearn(root, "proof-tree", FORGET, "--gate", "tree"),
    )


def _verify(real: Real, proof: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    out = proof.parent / f"{proof.name}-report.json"
    result = CliRunner().invoke(
        audit_cli,
        [
            "verify",
            str(proof),
            "--public-key",
            str(real.keys / "owner.pub"),
            "--original",
            str(real.work / "model.onnx"),
            "--forget",
            str(proof / "forget.npz"),
            "--reference",
            str(real.work / "test.npz"),
            "--seed",
            "0",
            "--json",
            str(out),
            *extra,
        ],
    )
    return result.exit_code, result.output, json.loads(out.read_text())


@pytest.mark.parametrize("name", ["proof", "proof-dense", "proof-routed", "proof-tree"])
def test_prune_proof_verifies(real: Real, name: str) -> None:
    code, output, report = _verify(real, real.root / name)
    assert code == 0, output
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["replay.claims"]["evidence"]["claims"] == len(FORGET)
    assert checks["region.probes"]["evidence"]["points_failed"] == 0
    gate = name.removeprefix("proof-") if "-" in name else "activation"
    assert checks["structure.patch"]["evidence"]["gate"] == gate
    assert checks["locality"]["evidence"]["max_abs_diff_outside"] == 0.0


def test_prune_receipt_verifies(real: Real) -> None:
    with np.load(real.work / "train.npz") as train:
        x, y = train["x"][FORGET[1]], int(train["y"][FORGET[1]])
    np.save(real.root / "x.npy", x)
    result = CliRunner().invoke(
        audit_cli,
        [
            "receipt",
            str(real.proof / "receipts" / "receipt-1.json"),
            "--certificate",
            str(real.proof / "certificate.json"),
            "--public-key",
            str(real.keys / "owner.pub"),
            "--sample",
            str(real.root / "x.npy"),
            "--label",
            str(y),
            "--model",
            str(real.proof / "model.onnx"),
        ],
    )
    assert result.exit_code == 0, result.output


def test_patched_model_for_other_forget_set_is_caught(real: Real, tmp_path: Path) -> None:
    """The owner certifies forget set A but deploys the model patched for set B, re-signing
    every digest: only the verifier's own regions and replay can tell."""
    import shutil

    proof = Path(shutil.copytree(real.proof, tmp_path / "proof"))
    resign_model(proof, (real.other / "model.onnx").read_bytes(), key=real.keys / "owner.key")
    code, _, report = _verify(real, proof, "--quiet")
    assert code == 1
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["signature.certificate"]["status"] == "pass"  # properly signed...
    assert checks["signature.model"]["status"] == "pass"
    assert checks["replay.claims"]["status"] == "fail"  # ...and still rejected
    assert checks["structure.patch"]["status"] == "fail"  # gates are not set A's regions


def test_bit_flip_in_prune_proof_is_caught(real: Real, tmp_path: Path) -> None:
    import shutil

    proof = Path(shutil.copytree(real.proof, tmp_path / "proof"))
    flip_byte(proof / "certificate.json", at=0.3, mask=0x04)
    code, output, _ = _verify(real, proof, "--quiet")
    assert code == 1 and "signature.certificate" in output


def test_certificate_carries_what_the_verifier_relies_on(real: Real) -> None:
    method = payload_of(real.proof)["predicate"]["method"]
    assert method["gate"] == "activation" and method["cut"] == "input"
    assert set(method["input_box"]) >= {"low", "high"}


def _retamper(
    real: Real, tmp_path: Path, change: Any, *, tree: bool = False
) -> tuple[int, str, dict[str, Any]]:
    """Edit the routed (``tree``: the tree-gated) proof's model with ``change(proto)``, re-sign
    every digest, verify."""
    import shutil

    import onnx

    proof = Path(shutil.copytree(real.tree if tree else real.routed, tmp_path / "proof"))
    proto = onnx.load_from_string((proof / "model.onnx").read_bytes())
    change(proto)
    resign_model(proof, proto.SerializeToString(), key=real.keys / "owner.key")
    return _verify(real, proof, "--quiet")


def _table(proto: Any, name: str) -> Any:
    return next(t for t in proto.graph.initializer if t.name == "prune/patch/" + name)


def test_routed_misrouting_tree_is_caught(real: Real, tmp_path: Path) -> None:
    """The owner swaps two leaves: two regions would get each other's patch (or none)."""
    from onnx import numpy_helper

    def swap(proto: Any) -> None:
        tensor = _table(proto, "route/leaf")
        leaf = numpy_helper.to_array(tensor).copy()
        first = np.flatnonzero(leaf != leaf[0])[0]
        leaf[[0, first]] = leaf[[first, 0]]
        tensor.CopyFrom(numpy_helper.from_array(leaf, tensor.name))

    code, _, report = _retamper(real, tmp_path, swap)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and checks["structure.patch"]["status"] == "fail"
    assert "routes to patch" in checks["structure.patch"]["detail"]


def _strict_comparison(proto: Any) -> None:
    """``z_k > 0`` instead of ``z_k >= 0``: a tie would route elsewhere."""
    node = next(n for n in proto.graph.node if n.op_type == "GreaterOrEqual")
    node.op_type = "Greater"


def _gather_other_row(proto: Any) -> None:
    """The routed patch's vector taken from K instead of d (same shape of the same index)."""
    node = next(n for n in proto.graph.node if n.name == "prune/patch/route/d")
    node.input[0] = "prune/patch/K"


def _extra_node(proto: Any) -> None:
    """A harmless-looking Identity after the gate."""
    from onnx import helper

    proto.graph.node.append(
        helper.make_node("Identity", ["prune/patch/g"], ["prune/patch/g2"], name="prune/patch/g2")
    )


@pytest.mark.parametrize("edit", [_strict_comparison, _gather_other_row, _extra_node])
def test_routed_graph_off_the_canonical_form_is_caught(
    real: Real, tmp_path: Path, edit: Any
) -> None:
    code, _, report = _retamper(real, tmp_path, edit)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and checks["structure.patch"]["status"] == "fail", edit.__name__
    assert "canonical" in checks["structure.patch"]["detail"]


def _tree_attribute(proto: Any, name: str) -> Any:
    node = next(n for n in proto.graph.node if n.name == "prune/patch/route/tree")
    return next(a for a in node.attribute if a.name == name)


def _swap_leaves(proto: Any) -> None:
    """Two leaves exchange their patches: two regions would get each other's patch."""
    weights = _tree_attribute(proto, "target_weights").floats
    weights[0], weights[1] = weights[1], weights[0]


def _strict_tree_comparison(proto: Any) -> None:
    """``z_k > 0`` instead of ``z_k >= 0`` at every branch: a tie would route elsewhere."""
    modes = _tree_attribute(proto, "nodes_modes").strings
    for i, mode in enumerate(modes):
        if mode == b"BRANCH_GTE":
            modes[i] = b"BRANCH_GT"


def _shifted_threshold(proto: Any) -> None:
    """The root's threshold moved off 0: inputs near a region route differently."""
    _tree_attribute(proto, "nodes_values").floats[0] = 0.5


def _base_value(proto: Any) -> None:
    """An additive trigger: every routed index shifted by a base value of the ensemble."""
    from onnx import helper

    node = next(n for n in proto.graph.node if n.name == "prune/patch/route/tree")
    node.attribute.append(helper.make_attribute("base_values", [1.0]))


def _cycle(proto: Any) -> None:
    """A branch whose true child is the root: a walk that never ends."""
    _tree_attribute(proto, "nodes_truenodeids").ints[0] = 0


def _ml_opset(proto: Any) -> None:
    """The ai.onnx.ml import moved to version 5, where the router is deprecated."""
    entry = next(e for e in proto.opset_import if e.domain == "ai.onnx.ml")
    entry.version = 5


@pytest.mark.parametrize(
    ("edit", "check", "reason"),
    [
        (_swap_leaves, "structure.patch", "routes to patch"),
        (_strict_tree_comparison, "structure.patch", "neither LEAF nor BRANCH_GTE"),
        (_shifted_threshold, "structure.patch", "not the canonical form"),
        (_base_value, "structure.patch", "not the canonical form"),
        (_cycle, "structure.patch", "not a later node"),
        (_cycle, "replay.claims", "a cycle or a dangling id"),  # the sandbox never runs it
        (_ml_opset, "structure.original", "opset imports differ"),
    ],
)
def test_tree_gate_off_its_form_is_caught(
    real: Real, tmp_path: Path, edit: Any, check: str, reason: str
) -> None:
    code, _, report = _retamper(real, tmp_path, edit, tree=True)
    checks = {c["name"]: c for c in report["checks"]}
    assert code == 1 and checks[check]["status"] == "fail", edit.__name__
    assert reason in checks[check]["detail"], checks[check]["detail"]
