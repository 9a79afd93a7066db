"""Where a cluster worker's time goes, in CPU seconds (valid on a loaded machine): each case runs
in a fresh Python process, as a new worker would.

* ``import``: importing torch, and importing what a worker imports to run a reference-model
  task (``audit.mia._execution``);
* ``first_model`` vs ``next_model``: the first reference model a process trains pays for
  torch.optim's first use (it imports torch._dynamo); the next ones are training only;
* ``malloc_trim_65536``: the same steady-state model with ``MALLOC_TRIM_THRESHOLD_=65536``, the
  value Dask's nanny gives its workers by default, and the page faults it causes.

The model is one reference model of ``benchmarks/bench_cluster.py`` (MLP 256-256, 12 epochs,
batch 128) on ``--samples`` random Fashion-MNIST-shaped rows.

    python benchmarks/cluster_diagnose.py        # about 1 min of CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

_IMPORT = """
import json, sys, time
t = time.process_time(); import torch; a = time.process_time() - t
t = time.process_time(); import audit.mia._execution; b = time.process_time() - t
print(json.dumps({"torch_cpu_s": round(a, 3), "worker_modules_cpu_s": round(b, 3),
                  "scipy_stats_imported": "scipy.stats" in sys.modules}))
"""

_TRAIN = """
import json, resource, sys, time
import numpy as np
from audit.mia import Architecture, TrainingRecipe
from audit.mia._train import train_model
n = int(sys.argv[1])
rng = np.random.default_rng(0)
x, y = rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)
arch, recipe = Architecture("mlp", (256, 256), (784,), 10), TrainingRecipe(epochs=12)
out = []
for seed in range(3):
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    train_model(arch, x, y, recipe=recipe, seed=seed)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out.append({"cpu_s": round(time.process_time() - t, 3),
                "system_s": round(r1.ru_stime - r0.ru_stime, 3),
                "minor_faults": r1.ru_minflt - r0.ru_minflt})
print(json.dumps(out))
"""


def run(code: str, *args: str, trim: str | None = None) -> Any:
    """``code`` in a fresh process, with ``MALLOC_TRIM_THRESHOLD_=trim`` (unset for ``None``)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    if trim is not None:
        env["MALLOC_TRIM_THRESHOLD_"] = trim
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster-diagnose.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    plain = run(_TRAIN, str(args.samples))
    trimmed = run(_TRAIN, str(args.samples), trim="65536")
    doc = {
        "benchmark": "cluster-diagnose",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/cluster_diagnose.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "python_bytecode_cache": os.environ.get("PYTHONDONTWRITEBYTECODE") is None,
        "samples_per_model": args.samples,
        "import": run(_IMPORT),
        "first_model": plain[0],
        "next_model": plain[1:],
        "malloc_trim_65536": trimmed[1:],
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
