"""Narrow heads after a MaxPool (issue #15): the default cut against a cut before the pooling.

Whole-region patches change every input of a forgotten sample's linear region. A CNN whose
default cut lands after its last MaxPool has only the narrow dense head to split its feature
space into regions, so the regions are coarse and other test points share them. ``--cut`` at the
input rewrites the pooling into the head (``prune/model/_maxpool.py``): the convolution and
pooling comparisons split the regions too.

Model: ``Conv(1->4, 3x3) -> Relu -> MaxPool 2x2 -> Flatten -> Linear(676->W) -> Relu ->
Linear(W->10)`` on Fashion-MNIST (6,000 training, 2,000 test images), trained 8 epochs with Adam,
exported by the legacy exporter with a dynamic batch. Per width and seed: forget 3 correctly
classified training points with ``prune unlearn`` default options (signed), once with the
cut as exported (``after_pool``, the cut after the pool), with no ``--cut`` (``default``: prune
re-patches with the pooling in the head when the cut after it costs the retained data over half a
point) and with ``--cut`` at the input (``input``); ``audit verify`` each; test accuracy by
onnxruntime. Each command runs in its own process (wall and CPU time, load average recorded).

Run: ``nice -n 10 python benchmarks/bench_pool_cut.py`` (writes
benchmarks/results/pool-cut.json; ``--widths``, ``--seeds``, ``--out``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
FORGET = 3


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], float, float]:
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return done, time.perf_counter() - start, _children_cpu() - cpu


def _train(x: NDArray[np.float32], y: NDArray[np.int64], width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 13 * 13, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(8):
        order = torch.randperm(len(xs))
        for i in range(0, len(xs), 64):
            batch = order[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
            opt.step()
    return model.eval()


def _labels(path: Path, x: NDArray[np.float32]) -> NDArray[np.int64]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = session.run(None, {session.get_inputs()[0].name: x})
    logits = out[names.index("prune/output")] if "prune/output" in names else out[0]
    return np.asarray(logits).argmax(axis=1)


def _case(work: Path, width: int, seed: int, data: dict[str, Any]) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    model = _train(data["x_train"], data["y_train"], width, seed)
    path = work / "model.onnx"
    torch.onnx.export(
        model,
        (torch.from_numpy(data["x_train"][:1]),),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    y_test = data["y_test"]
    pred = _labels(path, data["x_train"])
    correct = np.flatnonzero(pred == data["y_train"])
    forget = np.random.default_rng(seed).choice(correct, FORGET, replace=False)
    (work / "forget.txt").write_text("".join(f"{i}\n" for i in forget))
    row: dict[str, Any] = {
        "width": width,
        "seed": seed,
        "forget": forget.tolist(),
        "test_original": float((_labels(path, data["x_test"]) == y_test).mean()),
    }
    from prune.model import load_model

    after_pool = load_model(path.read_bytes()).head.cut  # the default cut as exported
    cases = (("after_pool", ["--cut", after_pool]), ("default", []), ("input", ["--cut", "x"]))
    for name, extra in cases:
        proof = work / f"proof-{name}"
        shutil.rmtree(proof, ignore_errors=True)  # a fresh run: prune refuses a used folder
        done, wall, cpu = _timed(
            [
                str(BIN / "prune"), "unlearn", str(path), "--train", str(data["train"]),
                "--test", str(data["test"]), "--forget-indices", str(work / "forget.txt"),
                "--key", str(data["keys"] / "owner.key"), "--out", str(proof), "--quiet", *extra,
            ]
        )  # fmt: skip
        if done.returncode:
            row[name] = {"error": (done.stdout + done.stderr).strip()[-400:]}
            continue
        original = proof / "original.onnx" if (proof / "original.onnx").exists() else path
        verified, vwall, vcpu = _timed(
            [
                str(BIN / "audit"), "verify", str(proof), "--public-key",
                str(data["keys"] / "owner.pub"), "--original", str(original), "--forget",
                str(proof / "forget.npz"), "--reference", str(data["test"]), "--quiet",
            ]
        )  # fmt: skip
        summary = json.loads((proof / "summary.json").read_text())
        after = _labels(proof / "model.onnx", data["x_test"])
        row[name] = {
            "repatched": "patching again" in done.stderr,
            "retain_drop": round(
                summary["retain_accuracy_before"] - summary["retain_accuracy_after"], 4
            ),
            "committed_rewritten": (proof / "original.onnx").exists(),
            "test_after": float((after == y_test).mean()),
            "forget_changed": bool(
                (
                    _labels(proof / "model.onnx", data["x_train"][forget])
                    != data["y_train"][forget]
                ).all()
            ),
            "unlearn_wall_s": round(wall, 2),
            "unlearn_cpu_s": round(cpu, 2),
            "verify_exit": verified.returncode,
            "verify_wall_s": round(vwall, 2),
            "verify_cpu_s": round(vcpu, 2),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="32,64")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-pool-cut"))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "pool-cut.json")
    args = parser.parse_args()
    from prune.data import load_dataset

    fashion = load_dataset("fashion-mnist")
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "x_train": fashion.x_train[:6000].astype(np.float32),
        "y_train": fashion.y_train[:6000].astype(np.int64),
        "x_test": fashion.x_test[:2000].astype(np.float32),
        "y_test": fashion.y_test[:2000].astype(np.int64),
        "train": work / "train.npz",
        "test": work / "test.npz",
        "keys": work / "keys",
    }
    np.savez(data["train"], x=data["x_train"], y=data["y_train"])
    np.savez(data["test"], x=data["x_test"], y=data["y_test"])
    if not (data["keys"] / "owner.key").exists():
        subprocess.run(
            [str(BIN / "prune"), "keygen", "--out", str(data["keys"]), "--no-passphrase"],
            check=True,
            capture_output=True,
        )
    load_start = os.getloadavg()[0]
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = _case(work / f"w{width}-s{seed}", width, seed, data)
            print(json.dumps(row), flush=True)
            rows.append(row)
    doc = {
        "benchmark": "pool-cut",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_pool_cut.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_start": load_start,
            "load_end": os.getloadavg()[0],
        },
        "rows": rows,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
