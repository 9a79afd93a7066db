"""Check the GPU path: onnxruntime's CUDA provider for replay and for ``audit verify``.

Two phases, because the GPU machine has no network and no copy of the data:

``prepare OUT`` (here, on the CPU machine): a Fashion-MNIST MLP 784-256-256-10 (trained briefly;
its weights do not matter for throughput), patched models with 100 and 1000 activation-gated
patches made by the real engine, the Fashion-MNIST test set, and a small signed digits proof.

``run DIR`` (on the GPU machine, onnxruntime-gpu installed): replay throughput and batch-256
latency on the CPU and CUDA providers for the original and patched models, the largest
CUDA-vs-CPU logit difference, and ``verify_proof`` on both providers (every check but
``signature.model``, whose ``model_signing`` dependency is not installed there), which must give
the same outcomes. Writes ``DIR/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prepare(out: Path) -> None:
    from prune.data import load_dataset
    from prune.train import TrainConfig, export_onnx, model_input, train
    from prune.unlearn import unlearn

    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("fashion-mnist")
    model, result = train(data, TrainConfig(hidden=(256, 256), epochs=1, seed=0))
    export_onnx(model, out / "fashion.onnx", input_shape=result.input_shape)
    x_tr = model_input("mlp", data.x_train)
    x_te = model_input("mlp", data.x_test)
    np.savez(out / "fashion-test.npz", x=x_te, y=data.y_test)
    raw = (out / "fashion.onnx").read_bytes()
    rng = np.random.default_rng(0)
    for count in (100, 1000):
        idx = rng.choice(len(x_tr), size=count, replace=False)
        res = unlearn(raw, x_tr, data.y_train, forget_indices=idx, threads=1)
        (out / f"fashion-patched-{count}.onnx").write_bytes(res.patched_model)
        print(f"patched with {res.summary['patches']} patches")
    work, keys, proof = out / "digits", out / "keys", out / "proof"
    prune = str(Path(sys.executable).parent / "prune")
    subprocess.run(
        [prune, "train", "--out", str(work), "--hidden", "32,32", "--epochs", "40", "--quiet"],
        check=True,
    )
    subprocess.run([prune, "keygen", "--out", str(keys), "--no-passphrase"], check=True)
    (out / "forget.txt").write_text("\n".join(str(i) for i in range(0, 400, 20)) + "\n")
    subprocess.run(
        [prune, "unlearn", str(work / "model.onnx"), "--train", str(work / "train.npz"),
         "--test", str(work / "test.npz"), "--forget-indices", str(out / "forget.txt"),
         "--key", str(keys / "owner.key"), "--out", str(proof), "--quiet"],
        check=True,
    )  # fmt: skip
    (work / "train.npz").unlink()  # not needed on the GPU machine


def _time(fn: Any, repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(folder: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from audit.runtime import OnnxModel, available_providers
    from audit.verify import CHECKS, VerifyInputs, verify_proof

    doc: dict[str, Any] = {
        "version": 1,
        "created": datetime.now(UTC).isoformat(),
        "onnxruntime": ort.__version__,
        "providers_available": ort.get_available_providers(),
        "auto_providers": available_providers("auto"),
        "python": platform.python_version(),
    }
    try:
        doc["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        doc["gpu"] = "nvidia-smi not found"
    with np.load(folder / "fashion-test.npz") as data:
        x = np.asarray(data["x"], np.float32)
    rows = []
    for name in ("fashion.onnx", "fashion-patched-100.onnx", "fashion-patched-1000.onnx"):
        logits = {}
        for device in ("cpu", "cuda"):
            model = OnnxModel(folder / name, device=device)
            batch = x[:256]
            lat = _time(lambda m=model, b=batch: m.logits(b))
            thr = _time(lambda m=model: m.logits(x, batch_size=4096), repeat=5)
            logits[device] = model.logits(x)
            rows.append(
                {
                    "model": name,
                    "device": device,
                    "providers": model.providers,
                    "latency_batch256_ms": 1000 * lat,
                    "throughput_samples_per_s": len(x) / thr,
                }
            )
        diff = float(np.abs(logits["cpu"] - logits["cuda"]).max())
        same = float((logits["cpu"].argmax(1) == logits["cuda"].argmax(1)).mean())
        rows.append(
            {"model": name, "max_abs_logit_diff_cuda_vs_cpu": diff, "argmax_agreement": same}
        )
    doc["replay"] = rows
    checks = [c for c in CHECKS if c != "signature.model"]
    outcomes = {}
    for device in ("cpu", "cuda"):
        start = time.perf_counter()
        report = verify_proof(
            VerifyInputs(
                proof=folder / "proof",
                public_key=folder / "keys" / "owner.pub",
                original=folder / "digits" / "model.onnx",
                forget=folder / "proof" / "forget.npz",
                reference=folder / "digits" / "test.npz",
            ),
            now=datetime.now(UTC),
            rng=np.random.default_rng(0),
            device=device,
            checks=checks,
        )
        outcomes[device] = {
            "seconds": time.perf_counter() - start,
            "verdict": report.verdict,
            "checks": {o.name: o.status for o in report.outcomes},
        }
    doc["verify"] = outcomes
    doc["verify_same_outcomes"] = outcomes["cpu"]["checks"] == outcomes["cuda"]["checks"]
    (folder / "gpu.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=["prepare", "run"])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.phase == "prepare":
        if args.folder.exists():
            shutil.rmtree(args.folder)
        prepare(args.folder)
    else:
        print(json.dumps(run(args.folder), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
