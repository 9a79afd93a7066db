"""Fuzz ``audit verify``: apply random mutations to an honest proof and count how many the
verifier accepts. The requirement is 0.

Usage::

    python scripts/fuzz_verify.py --mutations 1000 --seed 0 \\
        --proof PROOF --public-key KEYS/owner.pub --original WORK/model.onnx \\
        --reference WORK/test.npz [--json OUT.json]
    python scripts/fuzz_verify.py --mutations 1000 --seed 0 --demo   # builds the test kit
    python scripts/fuzz_verify.py --mutations 10000 --seed 0 --demo --kinds sample,class

Mutation kinds (uniformly drawn): ``byte_flip`` and ``truncate`` on any of model.onnx,
certificate.json, model.sig, forget.npz; ``cert_field`` edits one leaf value of the signed
statement (number changed, string changed, list entry dropped or duplicated, key removed) and
re-encodes the payload *without* re-signing (a third party has no key); ``npz_edit`` changes the
openings (a value nudged, a label changed, rows swapped, a salt byte flipped, a leaf index
changed, a row dropped or repeated, x stored as float64).

A mutation the verifier accepts is checked for *semantic equivalence* with the honest proof
(same model bytes, same decoded envelope, same decoded signature bundle, same arrays and dtypes):
for example a bit flip in a zip timestamp of forget.npz, or in the unused low bits of a base64
character that a lenient decoder ignores. Those change no content and are reported apart as
``equivalent``; ``accepted`` counts only mutations whose content differs and still verified.

Each mutated proof is verified with the default (strict) policy and a fixed clock one hour after
the certificate's creation, *without* fail-fast by default: every check runs on every mutation,
so the checks that run the owner's model (through the sandbox) see the mutated files too, not
only the signature checks that catch most mutations first (``--fail-fast`` for a quick run).
``--demo --kinds sample,class`` builds two honest proofs (the test kit's sample proof and a
class-suppression proof made by ``prune unlearn --forget-class``) and splits the mutations
between them. Exit status 1 when ``accepted > 0``."""

from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from audit.verify import VerifyInputs, verify_proof
from prune.formats import Envelope, canonical_json

FILES = ("model.onnx", "certificate.json", "model.sig", "forget.npz")
KINDS = ("byte_flip", "truncate", "cert_field", "npz_edit")


@dataclass(frozen=True)
class Honest:
    proof: Path
    public_key: Path
    original: Path
    reference: Path
    now: datetime


def _byte_flip(folder: Path, rng: np.random.Generator) -> str:
    name = FILES[rng.integers(len(FILES))]
    data = bytearray((folder / name).read_bytes())
    i = int(rng.integers(len(data)))
    mask = 1 << int(rng.integers(8))
    data[i] ^= mask
    (folder / name).write_bytes(bytes(data))
    return f"byte_flip {name}@{i}^{mask:#04x}"


def _truncate(folder: Path, rng: np.random.Generator) -> str:
    name = FILES[rng.integers(len(FILES))]
    data = (folder / name).read_bytes()
    cut = int(rng.integers(len(data)))
    (folder / name).write_bytes(data[:cut])
    return f"truncate {name}@{cut}/{len(data)}"


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def _edit_value(value: Any, rng: np.random.Generator) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + int(rng.choice([-1, 1, 2, -(2**20)]))
    if isinstance(value, str):
        if not value:
            return "x"
        i = int(rng.integers(len(value)))
        alphabet = "0123456789abcdef.-Zx"
        replacement = alphabet[int(rng.integers(len(alphabet)))]
        if replacement == value[i]:
            replacement = "y"
        return value[:i] + replacement + value[i + 1 :]
    if value is None:
        return 0
    return None


def _cert_field(folder: Path, rng: np.random.Generator) -> str:
    path = folder / "certificate.json"
    envelope = Envelope.from_json(path.read_bytes())
    doc = json.loads(envelope.payload)
    paths = _leaves(doc)
    target = paths[int(rng.integers(len(paths)))]
    parent: Any = doc
    for key in target[:-1]:
        parent = parent[key]
    key = target[-1]
    action = rng.choice(["edit", "edit", "drop", "dup"])
    if action == "drop":
        del parent[key]
    elif action == "dup" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    else:
        parent[key] = _edit_value(parent[key], rng)
    payload = canonical_json(doc)
    path.write_bytes(Envelope(payload, envelope.payload_type, envelope.signatures).to_json())
    return f"cert_field {action} {'.'.join(map(str, target))}"


def _npz_edit(folder: Path, rng: np.random.Generator) -> str:
    path = folder / "forget.npz"
    with np.load(path) as data:
        arrays = {k: data[k].copy() for k in data.files}
    n = len(arrays["y"])
    row = int(rng.integers(n))
    action = str(
        rng.choice(["nudge", "label", "swap", "salt", "index", "drop", "repeat", "float64"])
    )
    if action == "nudge":
        flat = arrays["x"].reshape(n, -1)
        flat[row, int(rng.integers(flat.shape[1]))] += np.float32(rng.choice([1e-3, -0.5, 1.0]))
    elif action == "label":
        arrays["y"][row] += 1
    elif action == "swap" and n > 1:
        other = (row + 1) % n
        for key in ("x", "y", "salt"):
            arrays[key][[row, other]] = arrays[key][[other, row]]
    elif action == "salt":
        arrays["salt"][row, int(rng.integers(arrays["salt"].shape[1]))] ^= 0x40
    elif action == "index":
        arrays["leaf_index"][row] += 1
    elif action == "drop" and n > 1:
        arrays = {k: np.delete(v, row, axis=0) for k, v in arrays.items()}
    elif action == "repeat":
        arrays = {k: np.concatenate([v, v[row : row + 1]]) for k, v in arrays.items()}
    else:
        action = "float64"
        arrays["x"] = arrays["x"].astype(np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return f"npz_edit {action} row {row}"


MUTATORS: dict[str, Callable[[Path, np.random.Generator], str]] = {
    "byte_flip": _byte_flip,
    "truncate": _truncate,
    "cert_field": _cert_field,
    "npz_edit": _npz_edit,
}


def _decoded(folder: Path) -> dict[str, Any]:
    """What the proof *means*, for the equivalence test: raw model bytes, the decoded envelope,
    the decoded signature bundle (base64 fields decoded), the arrays with their dtypes."""

    def unb64(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: unb64(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unb64(v) for v in value]
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except ValueError:
                return value
        return value

    out: dict[str, Any] = {"model": (folder / "model.onnx").read_bytes()}
    try:
        env = Envelope.from_json((folder / "certificate.json").read_bytes())
        out["certificate"] = (env.payload, env.payload_type, env.signatures)
    except Exception:
        out["certificate"] = (folder / "certificate.json").read_bytes()
    try:
        out["signature"] = unb64(json.loads((folder / "model.sig").read_bytes()))
    except Exception:
        out["signature"] = (folder / "model.sig").read_bytes()
    try:
        with np.load(folder / "forget.npz", allow_pickle=False) as data:
            out["forget"] = {
                k: (data[k].dtype.str, data[k].shape, data[k].tobytes()) for k in data.files
            }
    except Exception:
        out["forget"] = (folder / "forget.npz").read_bytes()
    return out


def _inputs(honest: Honest, proof: Path) -> VerifyInputs:
    return VerifyInputs(
        proof=proof,
        public_key=honest.public_key,
        original=honest.original,
        forget=proof / "forget.npz",
        reference=honest.reference,
    )


def fuzz(
    honest: Honest,
    *,
    mutations: int,
    seed: int,
    work: Path,
    fail_fast: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``mutations`` random mutations; return the counts (see the module docstring). The
    honest proof must verify first, or every rejection would be meaningless."""
    check = verify_proof(
        _inputs(honest, honest.proof), now=honest.now, rng=np.random.default_rng(seed)
    )
    if not check.verified:
        raise SystemExit(f"the honest proof does not verify: {check.failures[0].detail}")
    rng = np.random.default_rng(seed)
    baseline = _decoded(honest.proof)
    counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    caught_by: Counter[str] = Counter()
    ran: Counter[str] = Counter()  # per check: mutations on which it ran (not "not run")
    accepted: list[str] = []
    equivalent: list[str] = []
    start = time.perf_counter()

    def summary(done: int) -> dict[str, Any]:
        return {
            "version": 1,
            "type": "https://prune-audit.dev/fuzz-verify/v1",
            "mutations": done,
            "seed": seed,
            "fail_fast": fail_fast,
            "rejected": counts["rejected"],
            "accepted": counts["accepted"],
            "equivalent": counts["equivalent"],
            "accepted_mutations": accepted,
            "equivalent_mutations": equivalent,
            "kinds": dict(kinds),
            "first_failed_check": dict(caught_by.most_common()),
            "checks_ran": dict(sorted(ran.items())),
            "seconds": round(time.perf_counter() - start, 2),
        }

    for i in range(mutations):
        folder = work / f"m{i}"
        shutil.copytree(honest.proof, folder, ignore=shutil.ignore_patterns("receipts"))
        kind = KINDS[int(rng.integers(len(KINDS)))]
        description = MUTATORS[kind](folder, rng)
        kinds[kind] += 1
        report = verify_proof(
            _inputs(honest, folder),
            now=honest.now,
            rng=np.random.default_rng(seed + i),
            fail_fast=fail_fast,
        )
        for outcome in report.outcomes:
            if outcome.status != "not-run" and not outcome.detail.startswith("not run"):
                ran[outcome.name] += 1
        if report.verified:
            if _decoded(folder) == baseline:
                counts["equivalent"] += 1
                equivalent.append(description)
            else:
                counts["accepted"] += 1
                accepted.append(description)
        else:
            counts["rejected"] += 1
            caught_by[report.failures[0].name] += 1
        shutil.rmtree(folder)
        if on_progress is not None and (i + 1) % 250 == 0:
            on_progress(summary(i + 1))
    return summary(mutations)


def _demo(root: Path) -> Honest:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.audit.adversarial.kit import build_kit

    kit = build_kit(root / "kit")
    return Honest(kit.proof, kit.keys / "owner.pub", kit.work.model, kit.work.test, kit.now)


def _demo_class(root: Path) -> Honest:
    """An honest class-suppression proof made with the owner's real commands."""
    from click.testing import CliRunner

    from prune.cli import cli as prune_cli

    work, keys, proof = root / "class-work", root / "class-keys", root / "class-proof"

    def run(*args: str) -> None:
        result = CliRunner().invoke(prune_cli, list(args))
        if result.exit_code != 0:
            raise SystemExit(f"prune {args[0]} failed: {result.output.strip()[:200]}")

    run(
        "train",
        "--dataset",
        "digits",
        "--hidden",
        "16,16",
        "--epochs",
        "20",
        "--out",
        str(work),
        "--quiet",
    )
    run("keygen", "--out", str(keys), "--no-passphrase")
    run(
        "unlearn", str(work / "model.onnx"), "--train", str(work / "train.npz"),
        "--test", str(work / "test.npz"), "--forget-class", "3",
        "--key", str(keys / "owner.key"), "--out", str(proof), "--quiet",
    )  # fmt: skip
    return Honest(
        proof,
        keys / "owner.pub",
        work / "model.onnx",
        work / "test.npz",
        _created(proof) + timedelta(hours=1),
    )


def _combine(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One summary over several honest proofs (counts added, per-kind details kept)."""
    total: dict[str, Any] = {
        "version": 1,
        "type": "https://prune-audit.dev/fuzz-verify/v1",
        "proofs": parts,
    }
    for key in ("mutations", "rejected", "accepted", "equivalent", "seconds"):
        total[key] = round(sum(p[key] for p in parts.values()), 2)
    total["accepted_mutations"] = [m for p in parts.values() for m in p["accepted_mutations"]]
    total["fail_fast"] = any(p["fail_fast"] for p in parts.values())
    return total


def _created(proof: Path) -> datetime:
    payload = json.loads(Envelope.from_json((proof / "certificate.json").read_bytes()).payload)
    created = datetime.strptime(payload["predicate"]["created"], "%Y-%m-%dT%H:%M:%SZ")
    return created.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo", action="store_true", help="build the test kit as the proof")
    parser.add_argument("--proof", type=Path)
    parser.add_argument("--public-key", type=Path)
    parser.add_argument("--original", type=Path)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument(
        "--kinds",
        default="sample",
        help="with --demo: honest proofs to mutate, comma-separated (sample, class)",
    )
    parser.add_argument(
        "--fail-fast", action="store_true", help="stop each verification at its first failure"
    )
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - {"sample", "class"}:
        parser.error("--kinds takes sample and/or class")
    with tempfile.TemporaryDirectory(prefix="fuzz-verify-") as tmp:
        root = Path(tmp)
        if args.demo:
            builders = {"sample": _demo, "class": _demo_class}
            honest_by_kind = {k: builders[k](root) for k in kinds}
        else:
            if not all((args.proof, args.public_key, args.original, args.reference)):
                parser.error("give --demo, or all of --proof --public-key --original --reference")
            honest_by_kind = {
                "given": Honest(
                    args.proof,
                    args.public_key,
                    args.original,
                    args.reference,
                    _created(args.proof) + timedelta(hours=1),
                )
            }
        parts = {}
        for index, (kind, honest) in enumerate(honest_by_kind.items()):
            share = args.mutations // len(honest_by_kind) + (
                1 if index < args.mutations % len(honest_by_kind) else 0
            )
            (root / f"work-{kind}").mkdir()

            def progress(partial: dict[str, Any], kind: str = kind) -> None:
                if args.json:
                    doc = _combine({**parts, kind: partial})
                    doc["complete"] = False
                    args.json.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

            parts[kind] = fuzz(
                honest,
                mutations=share,
                seed=args.seed + index,
                work=root / f"work-{kind}",
                fail_fast=args.fail_fast,
                on_progress=progress,
            )
        summary = _combine(parts)
        summary["seed"] = args.seed
        summary["command"] = "python scripts/fuzz_verify.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        summary["load_average"] = list(os.getloadavg())
        summary["complete"] = True
    text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    if args.json:
        args.json.write_text(text)
    print(text, end="")
    return 1 if summary["accepted"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
