"""Class deletions end to end: ``prune unlearn --forget-class`` (suppress and regions modes) ->
``audit verify``. The suppression proof verifies; a region-only class proof fails when the
auditor's class data still gets the class; every tampered suppression graph (re-signed by a
dishonest owner) fails ``class.suppression``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from audit.cli import cli as audit_cli
from audit.verify._class import expected_suppression, read_remap
from prune.cli import cli as prune_cli
from prune.formats import ClassClaim
from tests.audit.adversarial.registry import edit_certificate, payload_of, resign_model

pytestmark = pytest.mark.slow

K = 3


@dataclass(frozen=True)
class Work:
    root: Path
    suppress: Path
    regions: Path
    plain: Path


def _prune(*args: str) -> None:
    result = CliRunner().invoke(prune_cli, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Work:
    root = tmp_path_factory.mktemp("class")
    _prune(
        "train", "--dataset", "digits", "--hidden", "16,16", "--epochs", "20",
        "--out", str(root / "work"), "--quiet",
    )  # fmt: skip
    _prune("keygen", "--out", str(root / "keys"), "--no-passphrase")
    common = [
        str(root / "work" / "model.onnx"),
        "--train", str(root / "work" / "train.npz"),
        "--test", str(root / "work" / "test.npz"),
        "--forget-class", str(K),
        "--key", str(root / "keys" / "owner.key"),
        "--quiet",
    ]  # fmt: skip
    _prune("unlearn", *common, "--out", str(root / "suppress"))
    _prune("unlearn", *common, "--class-mode", "regions", "--out", str(root / "regions"))
    _prune("unlearn", *common, "--no-class-remap", "--out", str(root / "plain"))
    return Work(root, root / "suppress", root / "regions", root / "plain")


def _verify(
    work: Work, proof: Path, reference: Path | None = None, *extra: str
) -> tuple[int, dict[str, Any]]:
    out = proof.parent / f"{proof.name}-report.json"
    result = CliRunner().invoke(
        audit_cli,
        [
            "verify", str(proof),
            "--public-key", str(work.root / "keys" / "owner.pub"),
            "--original", str(work.root / "work" / "model.onnx"),
            "--forget", str(proof / "forget.npz"),
            "--reference", str(reference or work.root / "work" / "test.npz"),
            "--seed", "0", "--quiet", "--json", str(out), *extra,
        ],
    )  # fmt: skip
    report = json.loads(out.read_text())
    return result.exit_code, {c["name"]: c for c in report["checks"]}


@pytest.mark.parametrize("form", ["v2", "v1"])
def test_suppression_proof_verifies(work: Work, form: str) -> None:
    proof = work.suppress if form == "v2" else work.plain
    code, checks = _verify(work, proof)
    assert code == 0
    assert checks["class.suppression"]["status"] == "pass"
    evidence = checks["class.suppression"]["evidence"]
    assert evidence["formula_mismatches"] == 0
    assert evidence["form"] == f"prune/class-suppress/{form}"
    assert (evidence.get("remapped_points", 0) > 0) == (form == "v2")
    assert checks["class.reference"]["status"] == "pass"
    assert checks["structure.patch"]["status"] == "not-run"
    claim = payload_of(work.suppress)["predicate"]["class_claim"]
    assert claim["class"] == K and claim["removed"].startswith(f"class {K} is never predicted")


def test_region_only_class_proof_fails_on_the_auditors_class_data(work: Work) -> None:
    code, checks = _verify(work, work.regions)
    assert code == 1
    assert checks["class.reference"]["status"] == "fail"
    assert checks["class.reference"]["evidence"]["still_predicted"] > 0
    assert checks["class.suppression"]["status"] == "not-run"


def test_reference_without_the_class_cannot_show_its_removal(work: Work, tmp_path: Path) -> None:
    with np.load(work.root / "work" / "test.npz") as z:
        keep = z["y"] != K
        np.savez(tmp_path / "ref.npz", x=z["x"][keep], y=z["y"][keep])
    code, checks = _verify(work, work.suppress, tmp_path / "ref.npz")
    assert code == 1 and checks["class.reference"]["status"] == "fail"


def _set_op(model: onnx.ModelProto, name: str, op: str) -> None:
    next(n for n in model.graph.node if n.name == name).op_type = op


def _set_margin(model: onnx.ModelProto, value: float) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == "prune/patch/class/cap":
            cap = numpy_helper.to_array(t).copy()
            cap[K] = -value
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(cap, name=t.name))


def _set_remap(model: onnx.ModelProto, name: str, edit: Any) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == f"prune/patch/class/{name}":
            value = numpy_helper.to_array(t).copy()
            edit(value)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name=t.name))


def _extra_node(model: onnx.ModelProto) -> None:
    last = model.graph.node[-1]
    last.output[0] = "prune/patch/class/pre"  # the final Min now feeds an extra node
    model.graph.node.append(
        onnx.helper.make_node("Relu", ["prune/patch/class/pre"], ["prune/output"], name="x")
    )


TAMPERS = {
    "min-to-max": lambda m: _set_op(m, "prune/patch/output", "Max"),
    "smaller-margin": lambda m: _set_margin(m, 0.5),
    "extra-node": _extra_node,
    "gate-inverted": lambda m: _set_op(m, "prune/patch/class/active", "Greater"),
    "remap-skips-suppression": lambda m: _set_op(m, "prune/patch/class/logits_best", "ReduceMin"),
}


def _huge(value: Any) -> None:
    value[0] = 3e9


def _nan(value: Any) -> None:
    value[0, 0] = float("nan")


REMAP_TAMPERS = {"shift-beyond-float32": ("shift", _huge), "map-nan": ("map", _nan)}


@pytest.mark.parametrize("tamper", sorted(REMAP_TAMPERS))
def test_remap_that_breaks_the_float32_argument_fails(
    work: Work, tmp_path: Path, tamper: str
) -> None:
    """The remap's values are free parameters: the canonical rebuild takes them from the model,
    so only the bound on the remapped logits (or their finiteness) can catch these."""
    proof = Path(shutil.copytree(work.suppress, tmp_path / "proof"))
    model = onnx.load_from_string((proof / "model.onnx").read_bytes())
    name, edit = REMAP_TAMPERS[tamper]
    _set_remap(model, name, edit)
    resign_model(proof, model.SerializeToString(), key=work.root / "keys" / "owner.key")
    code, checks = _verify(work, proof)
    assert code == 1
    assert checks["class.suppression"]["status"] == "fail"
    assert "remap" in checks["class.suppression"]["detail"]


def test_remap_placing_k_below_the_cap_verifies(work: Work, tmp_path: Path) -> None:
    """Column K of the remap is free (the owner fits it to the proxy's log-odds of K): a model
    whose remapped K logit sits far below the cap on every remapped row is rebuilt canonically,
    replayed within the Gemm's error and passes; the same model with a non-finite column K
    fails."""
    proof = Path(shutil.copytree(work.suppress, tmp_path / "proof"))
    model = onnx.load_from_string((proof / "model.onnx").read_bytes())
    _set_remap(model, "map", lambda a: a.__setitem__((slice(None), K), 0.0))
    _set_remap(model, "shift", lambda b: b.__setitem__(K, -100.0))
    resign_model(proof, model.SerializeToString(), key=work.root / "keys" / "owner.key")
    code, checks = _verify(work, proof)
    assert code == 0, checks["class.suppression"]["detail"]
    evidence = checks["class.suppression"]["evidence"]
    assert evidence["formula_mismatches"] == 0
    assert evidence["uncapped_points"] == evidence["remapped_points"] > 0
    _set_remap(model, "map", lambda a: a.__setitem__((0, K), float("inf")))
    resign_model(proof, model.SerializeToString(), key=work.root / "keys" / "owner.key")
    code, checks = _verify(work, proof)
    assert code == 1
    assert "remap" in checks["class.suppression"]["detail"]


def test_remapped_model_claimed_as_v1_fails(work: Work, tmp_path: Path) -> None:
    proof = Path(shutil.copytree(work.suppress, tmp_path / "proof"))

    def edit(doc: dict[str, Any]) -> None:
        del doc["predicate"]["class_claim"]["form"]

    edit_certificate(proof, edit, key=work.root / "keys" / "owner.key")
    code, checks = _verify(work, proof)
    assert code == 1
    assert "canonical" in checks["class.suppression"]["detail"]


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_tampered_suppression_graph_fails(work: Work, tmp_path: Path, tamper: str) -> None:
    proof = Path(shutil.copytree(work.suppress, tmp_path / "proof"))
    model = onnx.load_from_string((proof / "model.onnx").read_bytes())
    TAMPERS[tamper](model)
    resign_model(proof, model.SerializeToString(), key=work.root / "keys" / "owner.key")
    code, checks = _verify(work, proof)
    assert code == 1
    assert checks["class.suppression"]["status"] == "fail"
    assert "canonical" in checks["class.suppression"]["detail"]


def _reissue_claim(work: Work, proof: Path, **changes: Any) -> None:
    """A dishonest owner re-signs a certificate whose class claim (and model) it changed."""
    claim = ClassClaim.from_dict(payload_of(proof)["predicate"]["class_claim"])
    claim = ClassClaim(**{**claim.__dict__, **changes})
    original = onnx.load_from_string((work.root / "work" / "model.onnx").read_bytes())
    from audit.verify._graph import find_head

    head = find_head(original, "input")
    served = onnx.load_from_string((proof / "model.onnx").read_bytes())
    model = expected_suppression(
        original,
        cut=head.cut,
        hidden=head.hidden,
        logits=head.output,
        classes=10,
        claim=claim,
        remap=read_remap(served),
    )
    key = work.root / "keys" / "owner.key"
    resign_model(proof, model.SerializeToString(), key=key)

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["class_claim"] = claim.to_dict()
        doc["predicate"]["forget_class"] = claim.forget_class

    edit_certificate(proof, edit, key=key)


def test_margin_float32_cannot_honour_fails(work: Work, tmp_path: Path) -> None:
    proof = Path(shutil.copytree(work.suppress, tmp_path / "proof"))
    _reissue_claim(work, proof, margin="1e-09")
    code, checks = _verify(work, proof)
    assert code == 1
    assert "float32" in checks["class.suppression"]["detail"]


def test_suppressing_another_class_than_the_deleted_one_fails(work: Work, tmp_path: Path) -> None:
    """Claim and model both say class 4 while the forget set is class 3: replay and the
    auditor's class-3 data catch it."""
    proof = Path(shutil.copytree(work.suppress, tmp_path / "proof"))
    _reissue_claim(work, proof, forget_class=4)
    code, checks = _verify(work, proof)
    assert code == 1
    assert (
        checks["replay.claims"]["status"] == "fail" or checks["class.reference"]["status"] == "fail"
    )


def test_box_narrower_than_the_data_fails(work: Work, tmp_path: Path) -> None:
    """A class claim over a box drawn inside the data: the class's absence would be certified
    where nobody queries (threat 18)."""
    proof = Path(shutil.copytree(work.suppress, tmp_path / "proof"))
    _reissue_claim(work, proof, high="0.25")
    code, checks = _verify(work, proof)
    assert code == 1
    assert checks["class.suppression"]["status"] == "fail"
    assert "outside the declared input box" in checks["class.suppression"]["detail"]


def _nan_beside_k(model: onnx.ModelProto) -> None:
    """``prune/output + row`` with NaN in every column but K: numpy's argmax reads a NaN column
    (never K), onnxruntime's ArgMax does not."""
    last = model.graph.node[-1]
    last.output[0] = "prune/patch/class/pre"
    row = np.full((1, 10), np.nan, np.float32)
    row[0, K] = 0.0
    model.graph.initializer.append(numpy_helper.from_array(row, name="prune/patch/nan"))
    model.graph.node.append(
        onnx.helper.make_node(
            "Add", ["prune/patch/class/pre", "prune/patch/nan"], ["prune/output"], name="nan"
        )
    )


def test_non_finite_logits_fail_class_reference_and_suppression(work: Work, tmp_path: Path) -> None:
    proof = Path(shutil.copytree(work.suppress, tmp_path / "proof"))
    model = onnx.load_from_string((proof / "model.onnx").read_bytes())
    _nan_beside_k(model)
    resign_model(proof, model.SerializeToString(), key=work.root / "keys" / "owner.key")
    code, checks = _verify(work, proof)
    assert code == 1
    assert checks["class.reference"]["status"] == "fail"
    assert "NaN or infinity" in checks["class.reference"]["detail"]
    assert checks["class.suppression"]["status"] == "fail"


def test_auditor_expecting_the_class_accepts_the_suppression(work: Work) -> None:
    code, checks = _verify(work, work.suppress, None, "--expect-class", str(K))
    assert code == 0 and checks["class.reference"]["status"] == "pass"


def test_auditor_expecting_another_class_or_a_class_fails(work: Work, tmp_path: Path) -> None:
    """A certificate for class K is not the deletion of class K+1; and the same region patches
    certified as a *sample* deletion of the class's records (every sample check passes) are not
    the deletion of class K (threat 19, ``class_as_samples``)."""
    code, checks = _verify(work, work.suppress, None, "--expect-class", str(K + 1))
    assert code == 1 and checks["class.reference"]["status"] == "fail"
    assert f"class {K + 1}" in checks["class.reference"]["detail"]
    proof = Path(shutil.copytree(work.regions, tmp_path / "as-samples"))

    def as_samples(doc: dict[str, Any]) -> None:
        doc["predicate"]["mode"] = "samples"
        del doc["predicate"]["forget_class"]

    edit_certificate(proof, as_samples, key=work.root / "keys" / "owner.key")
    code, checks = _verify(work, proof)
    assert checks["class.reference"]["status"] == "not-run"  # taken at its word: samples
    code, checks = _verify(work, proof, None, "--expect-class", str(K))
    assert code == 1 and checks["class.reference"]["status"] == "fail"
    assert "sample deletion" in checks["class.reference"]["detail"]


def test_class_margin_below_the_class_minimum_fails(work: Work, tmp_path: Path) -> None:
    """A tie suppression (margin 1: the class keeps e^-1 of the top class's probability) is a
    canonical graph whose claim holds, and still fails the claim policy; the auditor may lower
    the minimum explicitly."""
    proof = Path(shutil.copytree(work.suppress, tmp_path / "proof"))
    _reissue_claim(work, proof, margin="1.0")
    code, checks = _verify(work, proof)
    assert code == 1 and checks["claims.policy"]["status"] == "fail"
    assert "below the minimum 4" in checks["claims.policy"]["detail"]
    assert checks["class.suppression"]["status"] == "pass"
    code, checks = _verify(work, proof, None, "--min-class-margin", "1")
    assert checks["claims.policy"]["status"] == "pass"
