"""Benchmark the proof machinery against the issue's targets and record the numbers.

Targets (issue #3): commit 60,000 leaves with all inclusion proofs <= 2 s; verify 10,000
inclusion proofs <= 2 s; signing adds <= 1 s to ``prune unlearn`` for the Fashion-MNIST MLP.

Samples have the Fashion-MNIST shape ``[1, 28, 28]`` (float32, random values: hashing cost does
not depend on the values). The signing step is ``write_signed_proof`` in full (commitment,
certificate, model_signing signature and its self-check, forget.npz, receipts) on the exported
784-256-256-10 MLP with patch initializers of a 100-patch activation-gated patch appended.

Run: ``python benchmarks/bench_proofs.py`` (writes benchmarks/results/proofs.json)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from prune.claims import Claim
from prune.formats import MerkleTree, leaf_hashes, verify_inclusion
from prune.proofs import generate_keys, write_signed_proof

RESULTS = Path(__file__).parent / "results" / "proofs.json"
WORKDIR = Path(__file__).parent / "runs"


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    seconds, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, value


def summary(seconds: list[float], target: float) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(seconds), 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
        "repeats": len(seconds),
        "target_s": target,
        "meets_target": statistics.median(seconds) <= target,
    }


def bench_commit(n: int, repeats: int) -> tuple[dict[str, Any], MerkleTree, list[bytes]]:
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)

    def commit() -> tuple[MerkleTree, list[tuple[bytes, ...]]]:
        salts = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16)
        tree = MerkleTree(leaf_hashes(x, y, salts))
        return tree, tree.inclusion_proofs()

    seconds, (tree, _) = timed(commit, repeats)
    return {"leaves": n, **summary(seconds, 2.0)}, tree, list(tree.leaves)


def bench_verify(tree: MerkleTree, count: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    picks = rng.choice(tree.size, size=count, replace=False).tolist()
    proofs = [(i, tree.leaves[i], tree.inclusion_proof(i)) for i in picks]
    root, size = tree.root, tree.size

    def verify() -> None:
        for i, leaf, proof in proofs:
            verify_inclusion(leaf, i, size, proof, root)

    seconds, _ = timed(verify, repeats)
    return {"proofs": count, "tree_size": size, **summary(seconds, 2.0)}


@dataclass(frozen=True)
class _Result:
    patched_model: bytes
    claims: tuple[Claim, ...]
    method: dict[str, Any]
    summary: dict[str, Any]
    forget_x: np.ndarray
    forget_y: np.ndarray


def _fashion_mlp(patches: int) -> tuple[bytes, bytes]:
    import onnx
    from onnx import numpy_helper

    from prune.train import build_model, export_onnx

    model = build_model("mlp", input_shape=(784,), classes=10, hidden=(256, 256))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, input_shape=(784,))
        original = path.read_bytes()
    proto = onnx.load_model_from_string(original)
    rng = np.random.default_rng(2)
    hidden = 512
    extra = {
        "prune/patch/n": np.array(1000.0, np.float32),
        "prune/patch/K": rng.random((patches, 1), dtype=np.float32),
        "prune/patch/d": rng.random((patches, 10), dtype=np.float32),
        "prune/patch/pos": (rng.random((hidden, patches)) > 0.5).astype(np.float32),
        "prune/patch/neg": (rng.random((hidden, patches)) > 0.5).astype(np.float32),
    }
    for name, value in extra.items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    return original, proto.SerializeToString()


def bench_signing(forget: int, repeats: int, *, encrypted: bool, workdir: Path) -> dict[str, Any]:
    original, patched = _fashion_mlp(patches=min(forget, 100))
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, forget).astype(np.int64)
    claims = tuple(
        Claim(i, i, int(y[i]), int(y[i]), int((y[i] + 1) % 10), i % 100, 0.5, "certified")
        for i in range(forget)
    )
    result = _Result(
        patched_model=patched,
        claims=claims,
        method={"name": "prune", "n": 1000.0, "margin": 0.5, "gate": "activation"},
        summary={"forget_accuracy_before": 1.0, "forget_accuracy_after": 0.0},
        forget_x=rng.random((forget, 784), dtype=np.float32),
        forget_y=y,
    )
    passphrase = b"benchmark passphrase" if encrypted else None
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        keys = generate_keys(Path(tmp) / "keys", passphrase=passphrase)
        counter = iter(range(10**6))

        def write() -> None:
            folder = Path(tmp) / f"proof-{next(counter)}"
            folder.mkdir()
            (folder / "model.onnx").write_bytes(patched)
            write_signed_proof(
                folder,
                result=result,
                original_model=original,
                key_path=keys.private_key,
                passphrase=passphrase,
                now=datetime.now(UTC),
            )

        write()  # first call pays one-off imports (model_signing, onnx); reported separately
        seconds, _ = timed(write, repeats)
    return {
        "forget_samples": forget,
        "model_bytes": len(patched),
        "encrypted_key": encrypted,
        **summary(seconds, 1.0),
    }


def bench_signatures_only(repeats: int, *, workdir: Path) -> dict[str, Any]:
    """Only the two signatures: model_signing over the Fashion-MNIST MLP file (with its
    self-check) and the DSSE certificate signature; no commitment, no receipts."""
    from prune.formats import PAYLOAD_TYPE, sign_envelope
    from prune.proofs import open_private_key, sign_model, verify_model_signature

    _, patched = _fashion_mlp(patches=100)
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        keys = generate_keys(Path(tmp) / "keys")
        model = Path(tmp) / "model.onnx"
        model.write_bytes(patched)
        key = open_private_key(keys.private_key)
        payload = b"x" * 200_000  # about the size of a 1,000-claim statement

        def sign() -> None:
            sign_model(model, Path(tmp) / "model.sig", key=key)
            verify_model_signature(model, Path(tmp) / "model.sig", public_key=keys.public_key)
            sign_envelope(payload, PAYLOAD_TYPE, key.key)

        sign()
        seconds, _ = timed(sign, repeats)
    return {"model_bytes": len(patched), **summary(seconds, 1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=WORKDIR,
        help="where the proof folders are written (file creation speed varies a lot by folder)",
    )
    args = parser.parse_args()

    start = time.perf_counter()
    from model_signing import signing  # noqa: F401  (one-off import cost, measured)

    import_s = time.perf_counter() - start
    commit, tree, _ = bench_commit(60_000, args.repeats)
    verify = bench_verify(tree, 10_000, args.repeats)
    signing_results = [
        bench_signing(forget, args.repeats, encrypted=encrypted, workdir=args.workdir)
        for forget in (100, 1000)
        for encrypted in (False, True)
    ]
    signatures_only = bench_signatures_only(args.repeats, workdir=args.workdir)
    doc = {
        "version": 1,
        "benchmark": "proofs",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "commit_60k_leaves_with_all_proofs": commit,
        "verify_10k_inclusion_proofs": verify,
        "write_signed_proof_fashion_mlp": signing_results,
        "signatures_only_fashion_mlp": signatures_only,
        "model_signing_import_s": round(import_s, 4),
        "workdir": str(args.workdir),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
