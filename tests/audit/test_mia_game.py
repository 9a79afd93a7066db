"""The unlearning game (U-MIA) and the optional check of ``audit verify``: a model that never saw
the forget set passes, a model that still remembers it fails, and a model that pushes it to
confident wrong labels (what a patch does) fails too: two-sided."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia import (
    DOCUMENT_TYPE,
    LabelledData,
    LogitsFn,
    LossAttack,
    MiaConfig,
    ThresholdPolicy,
    forget_set_check,
    run_game,
    unlearning_audit,
)
from tests.audit.test_mia_support import ARCH, OVERFIT_RECIPE, overfit_target


def _mislabel(model: LogitsFn, forget: LabelledData) -> LogitsFn:
    """What a PRUNE patch does to the forget set: the next class wins by a wide margin there,
    and nothing changes elsewhere."""
    keys = {
        hashlib.sha256(r.tobytes()).digest(): int(c)
        for r, c in zip(forget.x, forget.y, strict=True)
    }

    def logits(x: NDArray[np.float32]) -> NDArray[np.float32]:
        out = np.array(model(x), dtype=np.float32)
        for i, row in enumerate(x):
            label = keys.get(hashlib.sha256(row.tobytes()).digest())
            if label is not None:
                out[i, (label + 1) % out.shape[1]] = out[i].max() + 8.0
        return out

    return logits


def _check(
    model: LogitsFn, forget: LabelledData, non_members: LabelledData, reference: LabelledData
):
    return forget_set_check(
        model,
        forget.x,
        forget.y,
        non_members.x,
        non_members.y,
        reference.x,
        reference.y,
        architecture=ARCH,
        attack="rmia",
        reference_models=4,
        policy=ThresholdPolicy(max_distinguishability=0.1, max_tpr=0.1),
        recipe=OVERFIT_RECIPE,
        bootstrap=50,
    )


def test_forget_set_check_is_two_sided() -> None:
    split, target = overfit_target(3)
    non = split.non_members
    unseen = LabelledData(non.x[:150], non.y[:150])
    held_out = LabelledData(non.x[150:], non.y[150:])
    remembered = LabelledData(split.members.x[:150], split.members.y[:150])

    fine = _check(target, unseen, held_out, split.reference)
    assert fine.passed, fine.detail
    assert "within policy" in fine.detail

    leaky = _check(target, remembered, held_out, split.reference)
    assert not leaky.passed and leaky.metrics.auc.value > 0.6, leaky.detail

    patched = _check(_mislabel(target, remembered), remembered, held_out, split.reference)
    assert not patched.passed
    assert patched.metrics.auc.value < 0.2
    assert "reversed TPR" in patched.detail and "|AUC-0.5|" in patched.detail


def test_unlearning_audit_document_with_an_auditor_retrained_model() -> None:
    split, target = overfit_target(3)
    forget = LabelledData(split.members.x[:60], split.members.y[:60])
    retained = LabelledData(split.members.x[60:], split.members.y[60:])
    config = MiaConfig(
        attacks=("loss", "lira"), reference_models=4, recipe=OVERFIT_RECIPE, bootstrap=30, seed=1
    )
    result = unlearning_audit(
        original=target,
        patched=_mislabel(target, forget),
        forget=forget,
        non_members=split.non_members,
        reference=split.reference,
        retained=retained,
        architecture=ARCH,
        config=config,
    )
    doc = json.loads(json.dumps(result.to_json()))
    assert (doc["version"], doc["type"]) == (1, DOCUMENT_TYPE)
    assert doc["game"] == "forget-vs-non-members"
    assert list(doc["models"]) == ["original", "patched", "retrained"]
    assert doc["models"]["original"]["accuracy_members"] == 1.0
    assert doc["models"]["patched"]["accuracy_members"] == 0.0
    retrained = result.model("retrained")
    assert retrained.accuracy_members < 1.0  # it never saw the forget set
    assert abs(retrained.attack("lira").auc.value - 0.5) < abs(
        result.model("original").attack("lira").auc.value - 0.5
    )
    assert result.model("patched").attack("loss").auc.value < 0.1
    assert doc["reference_models"]["models"] == 4 and doc["seed"] == 1


def test_the_game_refuses_overlapping_sets_and_empty_choices() -> None:
    split, target = overfit_target(3)
    with pytest.raises(InputError, match="disjoint"):
        run_game(
            {"t": target}, split.members, split.members, attacks=[LossAttack()], reference=None
        )
    with pytest.raises(InputError, match="at least one attack"):
        run_game({"t": target}, split.members, split.non_members, attacks=[], reference=None)
    with pytest.raises(InputError, match="unknown attack"):
        MiaConfig(attacks=("loss", "vibes"))
    with pytest.raises(InputError, match="max_distinguishability"):
        ThresholdPolicy(max_distinguishability=0.7)
