"""The honest proof kit the verifier tests start from: a work folder (original model, train and
test data), the owner's keys (and a stranger's), and a signed proof folder written with the
owner's real code (``prune.proofs.write_signed_proof``) around the hand-built patch of
:mod:`tests.audit.adversarial.synthetic`.

Build once per test session (:func:`session_kit`); every test copies the proof folder it
tampers with (:meth:`ProofKit.copy_proof`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from audit.verify import VerifyInputs
from prune.claims import Claim
from prune.data import load_dataset, save_npz
from prune.model import load_model
from prune.proofs import generate_keys, region_duals, write_signed_proof
from prune.regions import InputBox
from tests.audit.adversarial.synthetic import (
    Mlp,
    Outcome,
    PatchSpec,
    fit_mlp,
    interval_logits,
    mlp_from_onnx,
    mlp_onnx,
    patched_onnx,
    utc_now,
)

__all__ = [
    "ProofKit",
    "Work",
    "build_kit",
    "honest_patch",
    "issue_proof",
    "session_kit",
    "work_from_folder",
]

HIDDEN = ("/0/Gemm_output_0", "/1/Gemm_output_0")
MARGIN = 2.0


@dataclass(frozen=True)
class Work:
    """``prune train``'s output, built with scikit-learn for speed."""

    folder: Path
    mlp: Mlp
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    hidden: tuple[str, ...] = HIDDEN

    @property
    def model(self) -> Path:
        return self.folder / "model.onnx"

    @property
    def test(self) -> Path:
        return self.folder / "test.npz"


def build_work(folder: Path, *, seed: int = 0) -> Work:
    data = load_dataset("digits", seed=seed)
    x_tr = data.x_train.reshape(len(data.x_train), -1)
    x_te = data.x_test.reshape(len(data.x_test), -1)
    mlp = fit_mlp(x_tr, data.y_train, hidden=(16, 16), seed=seed)
    folder.mkdir(parents=True)
    onnx.save(mlp_onnx(mlp), str(folder / "model.onnx"))
    save_npz(folder / "train.npz", x_tr, data.y_train)
    save_npz(folder / "test.npz", x_te, data.y_test)
    return Work(folder, mlp, x_tr, data.y_train, x_te, data.y_test)


def work_from_folder(folder: Path) -> Work:
    """A ``prune train --arch mlp`` folder (model.onnx, train.npz, test.npz) as a :class:`Work`."""
    mlp, hidden = mlp_from_onnx(onnx.load(str(folder / "model.onnx")))
    with np.load(folder / "train.npz") as train, np.load(folder / "test.npz") as test:
        return Work(folder, mlp, train["x"], train["y"], test["x"], test["y"], hidden=hidden)


def pick_forget(work: Work, *, count: int, seed: int) -> NDArray[np.int64]:
    """Training rows with pairwise distinct activation patterns and no near-zero
    pre-activation (so float32 and float64 agree on their regions)."""
    z, _ = work.mlp.forward(work.x_train)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    seen: set[bytes] = set()
    for row in rng.permutation(len(z)):
        key = (z[row] >= 0).tobytes()
        if key in seen or np.abs(z[row]).min() < 1e-3:
            continue
        seen.add(key)
        chosen.append(int(row))
        if len(chosen) == count:
            break
    return np.array(chosen, dtype=np.int64)


def honest_patch(
    work: Work, rows: NDArray[np.int64], *, n: float = 100.0
) -> tuple[PatchSpec, list[Claim]]:
    """One constant patch per forget row on its region, target = runner-up class, margin
    certified over the whole input box by interval bounds."""
    z, logits = work.mlp.forward(work.x_train[rows])
    low, high = interval_logits(work.mlp, 0.0, 1.0)
    classes = logits.shape[1]
    pos = (z >= 0).T.astype(np.float64)
    d = np.zeros((len(rows), classes))
    k = np.zeros(len(rows))
    claims = []
    for u, row in enumerate(rows):
        label = int(work.y_train[row])
        ranked = np.argsort(-logits[u])
        target = int(next(c for c in ranked if c != label))
        m = max(high[j] for j in range(classes) if j != target) - low[target] + MARGIN
        d[u, target], k[u] = m, m
        claims.append(
            Claim(
                leaf_index=u,
                train_index=int(row),
                label=label,
                original_prediction=int(ranked[0]),
                target=target,
                patch=u,
                certified_margin=MARGIN - 0.01,
                region="certified",
            )
        )
    return PatchSpec(pos=pos, neg=1.0 - pos, d=d, K=k, n=n), claims


def honest_duals(original: bytes, spec: PatchSpec, claims: Sequence[Claim]) -> NDArray[np.float32]:
    """The region certificate of the claims, made with the owner's real code."""
    head = load_model(original).head
    targets = np.zeros(spec.d.shape[0], dtype=np.int64)
    for claim in claims:
        targets[claim.patch] = claim.target
    C = (
        None
        if spec.C is None
        else spec.C.reshape(spec.C.shape[0], *spec.d.shape).transpose(1, 0, 2)
    )
    return region_duals(
        head,
        InputBox(0.0, 1.0, "data-range"),
        active=spec.pos.T > 0.5,
        targets=targets,
        C=C,
        d=spec.d,
        claims=claims,
    )


def _accuracy(model: bytes, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": x})[0].argmax(1) == y).mean())


def issue_proof(
    work: Work,
    keys: Path,
    proof: Path,
    *,
    rows: NDArray[np.int64],
    spec: PatchSpec,
    claims: Sequence[Claim],
    created: datetime,
    method: dict[str, Any] | None = None,
    summary_edit: Callable[[dict[str, Any]], None] | None = None,
    model_edit: Callable[[onnx.ModelProto], None] | None = None,
    model_bytes: bytes | None = None,
    commitment_log: Path | None = None,
    seed: int = 0,
    duals: NDArray[np.float32] | None = None,
) -> None:
    """Export the patched model and let the owner's real code sign everything. ``model_edit``
    changes the exported model before signing; ``model_bytes`` replaces it outright."""
    original = work.model.read_bytes()
    patched = patched_onnx(onnx.load_from_string(original), spec, hidden=work.hidden)
    if model_edit is not None:
        model_edit(patched)
    data = model_bytes if model_bytes is not None else patched.SerializeToString()
    proof.mkdir(parents=True)
    (proof / "model.onnx").write_bytes(data)
    summary: dict[str, Any] = {
        "test_accuracy_before": _accuracy(original, work.x_test, work.y_test),
        "test_accuracy_after": _accuracy(data, work.x_test, work.y_test),
        "forget_accuracy_before": _accuracy(original, work.x_train[rows], work.y_train[rows]),
        "forget_accuracy_after": _accuracy(data, work.x_train[rows], work.y_train[rows]),
    }
    if summary_edit is not None:
        summary_edit(summary)
    outcome = Outcome(
        patched_model=data,
        claims=list(claims),
        method=method
        or {
            "name": "prune",
            "solver": "test-constant",
            "gate": "activation",
            "target_policy": "runner-up",
            "n": spec.n,
            "margin": MARGIN,
            "cut": "input",
            "input_box": {"low": 0.0, "high": 1.0, "source": "data-range"},
        },
        summary=summary,
        forget_x=work.x_train[rows],
        forget_y=work.y_train[rows],
        duals=duals if duals is not None else honest_duals(original, spec, claims),
    )
    write_signed_proof(
        proof,
        result=outcome,
        original_model=original,
        key_path=keys / "owner.key",
        commitment_log=commitment_log,
        rng=np.random.default_rng(seed),
        now=created,
    )


@dataclass(frozen=True)
class ProofKit:
    root: Path
    work: Work
    keys: Path
    other_keys: Path
    proof: Path
    rows: NDArray[np.int64]
    spec: PatchSpec
    claims: tuple[Claim, ...]
    created: datetime

    @property
    def now(self) -> datetime:
        """A verification time one hour after the certificate was issued."""
        return self.created + timedelta(hours=1)

    def inputs(self, proof: Path | None = None, **changes: Any) -> VerifyInputs:
        base = VerifyInputs(
            proof=proof or self.proof,
            public_key=self.keys / "owner.pub",
            original=self.work.model,
            forget=(proof or self.proof) / "forget.npz",
            reference=self.work.test,
        )
        return replace(base, **changes)

    def copy_proof(self, dest: Path) -> Path:
        shutil.copytree(self.proof, dest)
        return dest

    def reissue(self, dest: Path, **kwargs: Any) -> Path:
        """A fresh, *signed* proof by the same owner with some ingredient changed (the way a
        dishonest owner, who holds the key, would build one)."""
        options: dict[str, Any] = {
            "rows": self.rows,
            "spec": self.spec,
            "claims": self.claims,
            "created": self.created,
        }
        options.update(kwargs)
        issue_proof(self.work, self.keys, dest, **options)
        return dest


def build_kit(root: Path, *, forget: int = 6, seed: int = 0) -> ProofKit:
    work = build_work(root / "work", seed=seed)
    rows = pick_forget(work, count=forget, seed=seed)
    spec, claims = honest_patch(work, rows)
    generate_keys(root / "keys")
    generate_keys(root / "other-keys")
    created = utc_now()
    issue_proof(
        work, root / "keys", root / "proof", rows=rows, spec=spec, claims=claims, created=created
    )
    return ProofKit(
        root,
        work,
        root / "keys",
        root / "other-keys",
        root / "proof",
        rows,
        spec,
        tuple(claims),
        created,
    )


_KITS: dict[str, ProofKit] = {}


def session_kit(factory: Any) -> ProofKit:
    """One kit per test session (``factory`` is pytest's ``tmp_path_factory``)."""
    if "kit" not in _KITS:
        _KITS["kit"] = build_kit(factory.mktemp("kit"))
    return _KITS["kit"]
