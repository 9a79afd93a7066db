"""Hostile inputs over the commands, run as a user would run them: the CLI in a child process
with a 2 GiB address-space cap and a 60 s limit. Each case: no traceback, no hang, the contract's
exit code (1: the proof fails, with a report where one is asked for; 2: bad input), and nothing
read outside the files the auditor named.

The owner is assumed dishonest: the hostile models are *signed* with the owner's key (the
signature checks pass), so only the sandbox and the loaders stand between them and the
auditor."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tests.audit.adversarial.kit as kit_module
from prune.errors import ProofError
from prune.proofs import generate_keys
from tests.audit.adversarial.kit import ProofKit, session_kit

pytestmark = pytest.mark.slow

GiB = 1 << 30
MEMORY_CAP = 2 * GiB
TIME_LIMIT = 60.0


@dataclass(frozen=True)
class Run:
    code: int
    stderr: str
    seconds: float
    peak_rss: int  # bytes, the largest process of the run (the CLI or its sandbox worker)


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _cli(tool: str, *args: str | Path, cwd: Path | None = None) -> Run:
    """Run ``tool`` (audit or prune) in a fresh child under the memory cap and time limit."""
    code = f"from {tool}.cli import main; main()"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        preexec_fn=_cap,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    seconds = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    run = Run(proc.returncode, proc.stderr, seconds, max(peak, before) * 1024)
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert seconds < TIME_LIMIT
    return run


def _inproc(tool: str, *args: str | Path, cwd: Path | None = None) -> Run:
    """Run ``tool``'s command group in this process (click's runner): for refusals that read
    nothing large and cannot block, where a fresh interpreter would only add seconds of imports.
    Same contract as :func:`_cli`: no traceback, an exit code and stderr."""
    import importlib

    from click.testing import CliRunner

    group = importlib.import_module(f"{tool}.cli").cli
    start = time.monotonic()
    with contextlib.chdir(cwd or Path.cwd()):
        result = CliRunner().invoke(group, [str(a) for a in args], prog_name=tool)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{tool} raised {result.exception!r}") from result.exception
    run = Run(result.exit_code, result.stderr, time.monotonic() - start, 0)
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    return run


def _one_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if "[W:onnxruntime" not in line]
    assert len([line for line in lines if line.startswith(("audit:", "prune:", "Error:"))]) == 1
    return "\n".join(lines)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


def _verify_args(kit: ProofKit, proof: Path, *extra: str | Path) -> list[str | Path]:
    return [
        "verify", proof, "--public-key", kit.keys / "owner.pub", "--original", kit.work.model,
        "--forget", proof / "forget.npz", "--reference", kit.work.test, "--quiet", *extra,
    ]  # fmt: skip


def _rewire_output(model: onnx.ModelProto, make: Any) -> None:
    """Route the graph's output through the nodes ``make(pre, out)`` returns."""
    out = model.graph.output[0].name
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = out + "/pre"
    model.graph.node.extend(make(out + "/pre", out))


def _loop(model: onnx.ModelProto) -> None:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["v_in"], ["v_out"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(1 << 40, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "cond"),
        ]
    )
    _rewire_output(
        model, lambda pre, out: [helper.make_node("Loop", ["trips", "cond", pre], [out], body=body)]
    )


def _constant_of_shape(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.array([9 << 30], np.int64), "shp"))
    _rewire_output(
        model,
        lambda pre, out: [
            helper.make_node("ConstantOfShape", ["shp"], ["big"]),
            helper.make_node("ReduceSum", ["big"], ["big/sum"], keepdims=1),
            helper.make_node("Add", [pre, "big/sum"], [out]),
        ],
    )


def _nan_logits(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
    _rewire_output(model, lambda pre, out: [helper.make_node("Mul", [pre, "nan"], [out])])


def _external_patch(location: str) -> Any:
    def edit(model: onnx.ModelProto) -> None:
        for tensor in model.graph.initializer:
            if tensor.name.startswith("prune/patch/"):
                tensor.ClearField("raw_data")
                tensor.ClearField("float_data")
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", "0"), ("length", "4")):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                return

    return edit


@pytest.fixture(scope="module")
def signed(kit: ProofKit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Hostile models signed by the owner (the kit measures accuracies in-process with plain
    onnxruntime, which must not run them: that step is stubbed here)."""
    root = tmp_path_factory.mktemp("signed")
    accuracy = kit_module._accuracy
    kit_module._accuracy = lambda *args: 0.5  # type: ignore[assignment]
    try:
        return {
            name: kit.reissue(root / name, model_edit=edit)
            for name, edit in (
                ("loop", _loop),
                ("constant_of_shape", _constant_of_shape),
                ("nan", _nan_logits),
            )
        }
    finally:
        kit_module._accuracy = accuracy  # type: ignore[assignment]


# -- unbounded work on the owner's model ---------------------------------------------------------


@pytest.mark.parametrize("name", ["loop", "constant_of_shape"])
def test_signed_unbounded_model_is_a_failed_check_not_a_hang(
    kit: ProofKit, signed: dict[str, Path], tmp_path: Path, name: str
) -> None:
    out = tmp_path / "report.json"
    run = _cli("audit", *_verify_args(kit, signed[name], "--json", out))
    assert run.code == 1
    assert run.peak_rss < MEMORY_CAP
    report = json.loads(out.read_text())
    replay = next(c for c in report["checks"] if c["name"] == "replay.claims")
    assert replay["status"] == "fail"
    assert "bounded ops" in replay["detail"] or "budget" in replay["detail"]


def test_signed_unbounded_model_still_gets_a_failing_report(
    kit: ProofKit, signed: dict[str, Path], tmp_path: Path
) -> None:
    proof = signed["loop"]
    run = _cli(
        "audit", "report", proof, "--public-key", kit.keys / "owner.pub",
        "--original", kit.work.model, "--forget", proof / "forget.npz",
        "--reference", kit.work.test, "--out", tmp_path / "rep", "--mia", "none", "--quiet",
    )  # fmt: skip
    assert run.code == 1
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["verdict"] != "verified"


def test_nan_logit_model_gets_a_failing_report(
    kit: ProofKit, signed: dict[str, Path], tmp_path: Path
) -> None:
    proof = signed["nan"]
    run = _cli(
        "audit", "report", proof, "--public-key", kit.keys / "owner.pub",
        "--original", kit.work.model, "--forget", proof / "forget.npz",
        "--reference", kit.work.test, "--out", tmp_path / "rep", "--mia", "loss",
        "--shadow-models", "1", "--quiet",
    )  # fmt: skip
    assert run.code == 1
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["verdict"] != "verified"


def test_external_data_never_reads_the_auditors_files(kit: ProofKit, tmp_path: Path) -> None:
    """A patch tensor stored as external data at a path relative to the auditor's working
    directory: neither the checks nor the report's patch statistics may open it."""
    secret = b"\x13\x37\xbe\xef"
    (tmp_path / "secret.bin").write_bytes(secret)
    proof = kit.copy_proof(tmp_path / "proof")
    model = onnx.load_from_string((proof / "model.onnx").read_bytes())
    _external_patch("secret.bin")(model)
    (proof / "model.onnx").write_bytes(model.SerializeToString())
    run = _cli(
        "audit", "report", proof, "--public-key", kit.keys / "owner.pub",
        "--original", kit.work.model, "--forget", proof / "forget.npz",
        "--reference", kit.work.test, "--out", tmp_path / "rep", "--mia", "none", "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.code == 1
    text = (tmp_path / "rep" / "report.json").read_text()
    doc = json.loads(text)
    assert doc["patch"] == {"status": "unreadable"}
    value = float(np.frombuffer(secret, np.float32)[0])
    assert repr(value) not in text


# -- files that are not what they claim ------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "match"),
    [("/dev/zero", "symbolic link"), ("/etc/passwd", "symbolic link")],
)
def test_symlinked_model_is_never_followed(
    kit: ProofKit, tmp_path: Path, target: str, match: str
) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    (proof / "model.onnx").unlink()
    (proof / "model.onnx").symlink_to(target)
    out = tmp_path / "r.json"
    run = _cli("audit", *_verify_args(kit, proof, "--json", out))
    assert run.code == 1 and match in run.stderr
    assert run.peak_rss < MEMORY_CAP
    text = out.read_text()
    import hashlib

    if Path(target).is_file():
        assert hashlib.sha256(Path(target).read_bytes()).hexdigest() not in text


def test_fifo_in_the_proof_folder_does_not_block(kit: ProofKit, tmp_path: Path) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    (proof / "certificate.json").unlink()
    os.mkfifo(proof / "certificate.json")
    run = _cli("audit", *_verify_args(kit, proof))
    assert run.code == 1 and "not a regular file" in run.stderr


def test_fifo_or_folder_as_auditor_input_is_named_precisely(kit: ProofKit, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    run = _cli(
        "audit", "verify", kit.proof, "--public-key", kit.keys / "owner.pub",
        "--forget", tmp_path / "fifo", "--original", tmp_path, "--partial", "--quiet",
    )  # fmt: skip
    assert run.code == 2 and "is a folder" in _one_line(run)


def test_200_mb_certificate_is_refused_unread(kit: ProofKit, tmp_path: Path) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    with open(proof / "certificate.json", "r+b") as handle:
        handle.truncate(200 << 20)  # sparse: costs no disk
    run = _cli("audit", *_verify_args(kit, proof))
    assert run.code == 1 and "limit" in run.stderr
    assert run.peak_rss < MEMORY_CAP


def test_certificate_of_empty_objects_is_refused_before_parsing(
    kit: ProofKit, tmp_path: Path
) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    (proof / "certificate.json").write_bytes(b"[" + b",".join([b"{}"] * (10 << 20)) + b"]")
    run = _cli("audit", *_verify_args(kit, proof))
    assert run.code == 1 and "more than" in run.stderr
    assert run.peak_rss < MEMORY_CAP


def _zip_bomb(path: Path, *, rows: int) -> None:
    """A deflated forget.npz whose x declares ``rows * 4096`` float32 zeros (a few MB on disk)."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, 4096)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, header)  # type: ignore[no-untyped-call]
            chunk = bytes(4096 * 4 * 256)
            for _ in range(rows // 256):
                member.write(chunk)
        for name, array in (
            ("y", np.zeros(rows, np.int64)),
            ("salt", np.zeros((rows, 16), np.uint8)),
            ("leaf_index", np.arange(rows, dtype=np.int64)),
        ):
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array)


def test_npz_decompression_bomb_is_refused_before_decompressing(
    kit: ProofKit, tmp_path: Path
) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    _zip_bomb(proof / "forget.npz", rows=64 * 1024)  # 1 GiB declared, ~1 MB on disk
    run = _cli("audit", *_verify_args(kit, proof))
    assert run.code == 1 and "size limits" in run.stderr
    assert run.peak_rss < GiB


def test_trailing_data_inside_an_npz_member_is_refused(kit: ProofKit, tmp_path: Path) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    with zipfile.ZipFile(kit.proof / "forget.npz") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["y.npy"] += b"\x00" * 8
    with zipfile.ZipFile(proof / "forget.npz", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    run = _cli("audit", *_verify_args(kit, proof))
    assert run.code == 1 and "trailing data" in run.stderr


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _malleate(text: str) -> str | None:
    """Another spelling of the same bytes: set an unused low bit of the last character before
    the padding (``None`` when there is no padding, hence no unused bits)."""
    body = text.rstrip("=")
    if len(body) == len(text):
        return None
    last = _B64.index(body[-1]) ^ 1
    return body[:-1] + _B64[last] + text[len(body) :]


def test_malleable_base64_is_refused_by_the_parser() -> None:
    from prune.formats import Envelope, FormatError, canonical_json

    doc = {"payload": "QR==", "payloadType": "t", "signatures": [{"keyid": "k", "sig": "QQ=="}]}
    assert base64.b64decode("QR==") == base64.b64decode("QQ==")
    with pytest.raises(FormatError, match="not canonical base64"):
        Envelope.from_json(canonical_json(doc))


def test_non_canonical_base64_in_the_certificate_is_refused(kit: ProofKit, tmp_path: Path) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    doc = json.loads((proof / "certificate.json").read_bytes())
    fields = [(doc, "payload"), (doc["signatures"][0], "sig")]
    mutable = [(holder, key) for holder, key in fields if _malleate(holder[key]) is not None]
    if not mutable:  # both lengths a multiple of 3 (rare): the parser test above covers it
        pytest.skip("neither base64 field of this certificate has padding")
    holder, key = mutable[0]
    mutated = _malleate(holder[key])
    assert mutated is not None
    assert base64.b64decode(mutated) == base64.b64decode(holder[key])
    holder[key] = mutated
    (proof / "certificate.json").write_bytes(
        json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    )
    run = _cli("audit", *_verify_args(kit, proof))
    assert run.code == 1 and "not canonical base64" in run.stderr


# -- outputs ----------------------------------------------------------------------------------------


def test_json_output_never_overwrites_an_input(kit: ProofKit, tmp_path: Path) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    before = (proof / "certificate.json").read_bytes()
    run = _inproc("audit", *_verify_args(kit, proof, "--json", proof / "certificate.json"))
    assert run.code == 2 and "input" in _one_line(run)
    assert (proof / "certificate.json").read_bytes() == before
    key = kit.keys / "owner.pub"
    key_before = key.read_bytes()
    run = _inproc("audit", *_verify_args(kit, proof, "--json", key))
    assert run.code == 2 and key.read_bytes() == key_before


@pytest.mark.parametrize("where", ["folder", "under-a-file"])
def test_unwritable_json_output_is_one_line(kit: ProofKit, tmp_path: Path, where: str) -> None:
    (tmp_path / "afile").write_text("x")
    target = tmp_path if where == "folder" else tmp_path / "afile" / "r.json"
    run = _inproc("audit", *_verify_args(kit, kit.proof, "--json", target))
    assert run.code == 2
    _one_line(run)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_report_out_that_is_a_file_is_refused(kit: ProofKit, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    run = _inproc(
        "audit", "report", kit.proof, "--public-key", kit.keys / "owner.pub",
        "--out", tmp_path / "afile" / "sub", "--mia", "none", "--quiet",
    )  # fmt: skip
    assert run.code == 2
    _one_line(run)


def test_attestation_with_device_or_missing_model_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "att.json").write_text("{}")
    for model in ("/dev/zero", str(tmp_path / "missing.onnx")):
        run = _cli(
            "audit", "attestation", tmp_path / "att.json",
            "--auditor-public-key", tmp_path / "att.json", "--model", model,
        )  # fmt: skip
        assert run.code == 2
        _one_line(run)


def test_concurrent_keygen_never_leaves_a_mismatched_pair(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    for trial in range(15):
        folder = tmp_path / f"k{trial}"
        results: list[object] = []

        def make(folder: Path = folder, results: list[object] = results) -> None:
            try:
                results.append(generate_keys(folder))
            except ProofError as exc:
                results.append(exc)

        threads = [threading.Thread(target=make) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(not isinstance(r, ProofError) for r in results) == 1
        private = serialization.load_pem_private_key(
            (folder / "owner.key").read_bytes(), password=None
        )
        public = serialization.load_pem_public_key((folder / "owner.pub").read_bytes())
        assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
        assert sorted(p.name for p in folder.iterdir()) == ["owner.key", "owner.pub"]
        assert (folder / "owner.key").stat().st_mode & 0o777 == 0o600


def test_secrets_in_the_proof_are_owner_only(kit: ProofKit) -> None:
    assert (kit.proof / "forget.npz").stat().st_mode & 0o077 == 0
    assert (kit.proof / "receipts").stat().st_mode & 0o077 == 0
    for receipt in (kit.proof / "receipts").iterdir():
        assert receipt.stat().st_mode & 0o077 == 0


# -- strict parsing of the owner's own options ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--hidden", "0"],
        ["train", "--hidden", "-5"],
        ["train", "--hidden", "1_6"],
        ["train", "--seed", "-1"],
        ["unlearn", "m.onnx", "--train", "t.npz", "--forget-class", "1", "--margin", "1e30"],
        ["unlearn", "m.onnx", "--train", "t.npz", "--forget-class", "1", "--margin", "nan"],
        ["unlearn", "m.onnx", "--train", "t.npz", "--forget-class", "-1"],
    ],
)
def test_out_of_range_options_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    run = _inproc("prune", *args, "--out", tmp_path / "out", cwd=tmp_path)
    assert run.code == 2
    _one_line(run)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line", ["1_7", "\uff11\uff17", "+3", "-1", "0x11", "1.0", "1e3"])
def test_forget_indices_are_ascii_decimal_only(tmp_path: Path, line: str) -> None:
    from prune.cli._unlearn import read_forget_indices
    from prune.errors import DataError

    path = tmp_path / "idx"
    path.write_text(f"2\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError):
        read_forget_indices(path)


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY", b"PK\x03\x04junk"])
def test_broken_training_data_is_one_line(kit: ProofKit, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "t.npz").write_bytes(content)
    (tmp_path / "idx").write_text("1\n")
    run = _inproc(
        "prune", "unlearn", kit.work.model, "--train", tmp_path / "t.npz",
        "--forget-indices", tmp_path / "idx", "--out", tmp_path / "out",
    )  # fmt: skip
    assert run.code == 2
    _one_line(run)


def test_twelve_gigabyte_npy_header_is_refused_unallocated(kit: ProofKit, tmp_path: Path) -> None:
    header = {"descr": "<f4", "fortran_order": False, "shape": (3 << 30, 1)}
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as archive:
        with archive.open("x.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)  # type: ignore[no-untyped-call]
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, np.zeros(3, np.int64))
    (tmp_path / "idx").write_text("1\n")
    run = _cli(
        "prune", "unlearn", kit.work.model, "--train", tmp_path / "t.npz",
        "--forget-indices", tmp_path / "idx", "--out", tmp_path / "out",
    )  # fmt: skip
    assert run.code == 2 and "size limits" in _one_line(run)
    assert run.peak_rss < MEMORY_CAP


def test_two_unlearn_runs_into_one_out_leave_one_proof_and_no_leftovers(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from prune.cli._unlearn import _write
    from prune.errors import PruneError

    out = tmp_path / "proof"

    def result(tag: bytes) -> Any:
        return SimpleNamespace(patched_model=tag, summary={"run": tag.decode()}, method={})

    _write(out, result(b"first"), lambda folder: None)
    with pytest.raises(PruneError, match="cannot write the proof"):
        _write(out, result(b"second"), lambda folder: None)
    assert (out / "model.onnx").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proof"]
    with pytest.raises(KeyboardInterrupt):

        def interrupted(folder: Path) -> None:
            raise KeyboardInterrupt

        _write(tmp_path / "other", result(b"x"), interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proof"]


@pytest.mark.parametrize("labels", [[-1, 0], [10**12, 0]])
def test_reference_labels_must_be_class_indices(tmp_path: Path, labels: list[int]) -> None:
    from audit.errors import InputError
    from audit.proof import Limits, load_reference

    np.savez(tmp_path / "r.npz", x=np.zeros((2, 3), np.float32), y=np.array(labels))
    with pytest.raises(InputError, match="class indices"):
        load_reference(tmp_path / "r.npz", limits=Limits())
