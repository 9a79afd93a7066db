"""Side by side with IBM ART (adversarial-robustness-toolbox) on the same targets and splits.

Targets (``prune train``'s architectures and recipes, trained here with the auditor's trainer):

* digits: ReLU MLP 64-64, 60 epochs, batch 128, Adam 1e-3, on 300 members;
* Fashion-MNIST: ReLU MLP 256-256, 30 epochs, batch 128, Adam 1e-3, on 2,000 members (a
  subset, so that eight reference models train in minutes on a 2-core CPU).

Splits, shared by every attack: the target's members and an equal number of held-out test
images are each cut in two halves. The *attack-training* halves are what ART's black-box attack
learns from (its threat model: the attacker knows some members and non-members); every attack
is *evaluated* on the other halves. The auditor's reference data (digits 600, Fashion 4,000;
disjoint from everything above) trains our reference models and ART's shadow models.

ART: ``MembershipInferenceBlackBox`` (random forest on the prediction vector; and on the loss),
``ShadowModels`` (3 shadows with the target's recipe) + a black-box random forest trained on the
shadow dataset, and the rule-based label-only attack. Ours: LOSS, shadow, LiRA offline (fixed
variance), RMIA offline, the gap and decision-boundary label-only attacks, 8 reference models
with the target's recipe, 20 model-bootstrap draws. Every ROC and interval is computed by the
same code (``audit.mia.evaluate``, 1,000 bootstrap replicates).

Run: ``pip install adversarial-robustness-toolbox`` then
``nice -n 10 python benchmarks/bench_mia_art.py [--dataset digits|fashion-mnist|all]``
(writes benchmarks/results/mia-art-<dataset>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.mia import (
    Architecture,
    LabelledData,
    MiaConfig,
    TrainingRecipe,
    membership_audit,
    torch_logits_fn,
)
from audit.mia._arch import module_from_state
from audit.mia._game import library_versions
from audit.mia._metrics import evaluate
from audit.mia._train import train_model

ROOT = Path(__file__).resolve().parent
SETUPS: dict[str, dict[str, Any]] = {
    "digits": {"hidden": (64, 64), "epochs": 60, "members": 300, "reference": 600},
    "fashion-mnist": {"hidden": (256, 256), "epochs": 30, "members": 2000, "reference": 4000},
}


def _data(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from prune.data import load_dataset

    data = load_dataset(name)  # type: ignore[arg-type]
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    return flat(data.x_train), data.y_train, flat(data.x_test), data.y_test


def _art_classifier(module: nn.Module, dims: int, recipe: TrainingRecipe) -> Any:
    from art.estimators.classification import PyTorchClassifier

    class RecipeClassifier(PyTorchClassifier):  # type: ignore[misc]
        """Fits (and so trains ART's shadow models) with the target's epochs and batch size."""

        def fit(self, x: Any, y: Any, **kwargs: Any) -> None:
            kwargs.setdefault("nb_epochs", recipe.epochs)
            kwargs.setdefault("batch_size", recipe.batch_size)
            super().fit(x, y, **kwargs)

    return RecipeClassifier(
        module,
        nn.CrossEntropyLoss(),
        (dims,),
        10,
        optimizer=torch.optim.Adam(module.parameters(), lr=recipe.lr),
        device_type="cpu",
    )


def _metrics(pos: np.ndarray, neg: np.ndarray, seed: int) -> dict[str, Any]:
    m = evaluate(pos, neg, bootstrap=1000, rng=np.random.default_rng(seed))
    return {
        "auc": m.auc.to_dict(),
        "tpr_at_0.01": m.tpr(0.01).to_dict(),
        "tpr_at_0.001": m.tpr(0.001).to_dict(),
        "advantage": m.advantage.to_dict(),
    }


def run(name: str, seed: int) -> dict[str, Any]:
    setup = SETUPS[name]
    x_tr, y_tr, x_te, y_te = _data(name)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_tr))
    n = setup["members"]
    mem, ref = order[:n], order[n : n + setup["reference"]]
    test = rng.permutation(len(y_te))[:n]
    half = n // 2
    recipe = TrainingRecipe(epochs=setup["epochs"], batch_size=128, lr=1e-3)
    arch = Architecture("mlp", setup["hidden"], (x_tr.shape[1],), 10)
    start = time.perf_counter()
    trained = train_model(arch, x_tr[mem], y_tr[mem], recipe=recipe, seed=seed)
    module = module_from_state(arch, trained.state)
    target = torch_logits_fn(module)
    train_seconds = time.perf_counter() - start
    # evaluation halves (shared) and ART's attack-training halves
    ev_in = LabelledData(x_tr[mem[half:]], y_tr[mem[half:]])
    ev_out = LabelledData(x_te[test[half:]], y_te[test[half:]])
    kn_in_x, kn_in_y = x_tr[mem[:half]], y_tr[mem[:half]]
    kn_out_x, kn_out_y = x_te[test[:half]], y_te[test[:half]]
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}

    t = time.perf_counter()
    ours = membership_audit(
        {"target": target},
        ev_in,
        ev_out,
        LabelledData(x_tr[ref], y_tr[ref]),
        architecture=arch,
        config=MiaConfig(
            attacks=("loss", "shadow", "lira", "rmia", "gap", "boundary"),
            reference_models=8,
            recipe=recipe,
            seed=seed,
            model_bootstrap=20,
            train_size=n,
        ),
    )
    timings["ours_all"] = time.perf_counter() - t
    for a in ours.model("target").attacks:
        results[f"ours/{a.attack}"] = {
            "auc": a.metrics.auc.to_dict(),
            "tpr_at_0.01": a.metrics.tpr(0.01).to_dict(),
            "tpr_at_0.001": a.metrics.tpr(0.001).to_dict(),
            "advantage": a.metrics.advantage.to_dict(),
            "interval": "two-level (reference models x candidates)"
            if a.metrics.model_bootstrap
            else "candidates",
            "params": {k: v for k, v in a.params.items() if k != "sd_out"},
        }

    from art.attacks.inference.membership_inference import (
        MembershipInferenceBlackBox,
        MembershipInferenceBlackBoxRuleBased,
        ShadowModels,
    )

    classifier = _art_classifier(module, x_tr.shape[1], recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for input_type in ("prediction", "loss"):
            t = time.perf_counter()
            attack = MembershipInferenceBlackBox(
                classifier, input_type=input_type, attack_model_type="rf"
            )
            attack.fit(kn_in_x, kn_in_y, kn_out_x, kn_out_y)
            pos = attack.infer(ev_in.x, ev_in.y, probabilities=True).ravel()
            neg = attack.infer(ev_out.x, ev_out.y, probabilities=True).ravel()
            timings[f"art_blackbox_{input_type}"] = time.perf_counter() - t
            results[f"art/blackbox-{input_type}-rf"] = {
                **_metrics(pos, neg, seed),
                "interval": "candidates",
            }
        t = time.perf_counter()
        torch.manual_seed(seed)
        shadow_template = _art_classifier(arch.build(), x_tr.shape[1], recipe)
        shadows = ShadowModels(shadow_template, num_shadow_models=3, random_state=seed)
        (sm_x, sm_y, sm_p), (sn_x, sn_y, sn_p) = shadows.generate_shadow_dataset(
            x_tr[ref], y_tr[ref]
        )
        attack = MembershipInferenceBlackBox(classifier, attack_model_type="rf")
        attack.fit(sm_x, sm_y, sn_x, sn_y, sm_p, sn_p)
        pos = attack.infer(ev_in.x, ev_in.y, probabilities=True).ravel()
        neg = attack.infer(ev_out.x, ev_out.y, probabilities=True).ravel()
        timings["art_shadow"] = time.perf_counter() - t
        results["art/shadow-models-rf"] = {**_metrics(pos, neg, seed), "interval": "candidates"}
        rule = MembershipInferenceBlackBoxRuleBased(classifier)
        pos = rule.infer(ev_in.x, ev_in.y).astype(float).ravel()
        neg = rule.infer(ev_out.x, ev_out.y).astype(float).ravel()
        results["art/rule-based-label-only"] = {
            **_metrics(pos, neg, seed),
            "interval": "candidates",
        }
    acc = lambda d: float((target(d.x).argmax(1) == d.y).mean())  # noqa: E731
    return {
        "benchmark": "mia-vs-art",
        "dataset": name,
        "created": datetime.now(UTC).isoformat(),
        "setup": {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in setup.items()},
            "recipe": recipe.describe(),
            "evaluation": {"members": len(ev_in.y), "non_members": len(ev_out.y)},
            "art_attack_training": {"members": half, "non_members": half},
            "seed": seed,
        },
        "target": {"train_accuracy": acc(ev_in), "test_accuracy": acc(ev_out)},
        "reference_models": ours.reference,
        "results": results,
        "seconds": {"target_training": train_seconds, **timings},
        "loadavg": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {**library_versions(), "art": _art_version()},
    }


def _art_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("adversarial-robustness-toolbox")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=[*SETUPS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in SETUPS if args.dataset == "all" else (args.dataset,):
        doc = run(name, args.seed)
        out = ROOT / "results" / f"mia-art-{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        for key, r in doc["results"].items():
            print(
                f"{name:14s} {key:32s} AUC {r['auc']['value']:.3f} "
                f"[{r['auc']['low']:.3f}, {r['auc']['high']:.3f}]  "
                f"TPR@1% {r['tpr_at_0.01']['value']:.3f} TPR@0.1% {r['tpr_at_0.001']['value']:.3f}"
            )


if __name__ == "__main__":
    main()
