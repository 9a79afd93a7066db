"""Proxy budget of the class remap (prune/unlearn/_class_remap.py) against retraining: for one
model and class, the KL(retrained || patched) / seed-to-seed floor ratio of form v2 for each
proxy budget and proxy seed (the numbers quoted at ``DEFAULT_PROXY_BUDGET``).

Run (after bench_class.py has cached the original and the retrained models):
``nice -n 10 python benchmarks/class_proxy_budget.py fashion-mnist-mlp 5 160000,220000 3``
"""

import sys
import time

import numpy as np
import torch

from audit.verify._class import suppress_logits
from benchmarks import bench_class as bc
from benchmarks.study.artifacts import load_original
from benchmarks.study.evaluate import kl_divergence, logits
from prune.model import load_model
from prune.regions import box_from_data
from prune.suppress import logit_bound
from prune.unlearn._class_remap import fit_remap

torch.set_num_threads(1)
model = sys.argv[1]
k = int(sys.argv[2])
dataset, _, arch = model.rpartition("-")
orig = load_original(bc.WORK, dataset, arch, 0)
imp = load_model(orig.onnx)
head = imp.head
x = orig.x_train.reshape(len(orig.x_train), -1)
z = logits(orig.onnx, orig.x_train, threads=1).astype(np.float32)
if not imp.input_space:
    from prune.model import OrtRunner

    x = OrtRunner(orig.onnx, outputs=[head.cut]).run(orig.x_train)[0].reshape(len(x), -1)
box = box_from_data(x, input_space=imp.input_space)
B = logit_bound(head, box)
kx = orig.x_test[orig.y_test == k]
zr = [logits(bc._retrained(orig, dataset, arch, k, s), kx, threads=1) for s in bc.RETRAIN_SEEDS]
floor = 0.5 * (kl_divergence(zr[0], zr[1]) + kl_divergence(zr[1], zr[0]))
zo = logits(orig.onnx, kx, threads=1).astype(np.float32)
print(
    "plain",
    round(
        np.mean([kl_divergence(r, suppress_logits(zo, k, 8.0).astype(np.float64)) for r in zr])
        / floor,
        2,
    ),
    flush=True,
)
for budget in [int(b) for b in sys.argv[3].split(",")]:
    for seed in range(int(sys.argv[4])):
        t = time.process_time()
        f = fit_remap(
            head,
            x,
            z,
            orig.y_train,
            forget_class=k,
            bound=B,
            margin=8.0,
            budget=budget,
            seed=seed,
            clock=time.process_time,
        )
        zp = suppress_logits(zo, k, 8.0, (f.remap.matrix, f.remap.shift)).astype(np.float64)
        print(
            budget,
            seed,
            "epochs",
            f.proxy_epochs,
            "x",
            f.proxies,
            "ratio",
            round(np.mean([kl_divergence(r, zp) for r in zr]) / floor, 2),
            "cpu",
            round(time.process_time() - t, 1),
            flush=True,
        )
