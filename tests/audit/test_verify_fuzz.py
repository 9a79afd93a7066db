"""A small sample of scripts/fuzz_verify.py: random mutations of an honest proof, 0 accepted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.audit.adversarial.kit import ProofKit, session_kit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz_verify.py"


@pytest.fixture(scope="module")
def fuzz_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_verify", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_verify"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


def test_fuzz_sample_accepts_nothing(
    fuzz_module: ModuleType, kit: ProofKit, tmp_path: Path
) -> None:
    honest = fuzz_module.Honest(
        kit.proof, kit.keys / "owner.pub", kit.work.model, kit.work.test, kit.now
    )
    summary = fuzz_module.fuzz(honest, mutations=40, seed=11, work=tmp_path)
    assert summary["accepted"] == 0, summary["accepted_mutations"]
    assert summary["rejected"] + summary["equivalent"] == 40
    assert summary["rejected"] >= 30  # equivalents (zip metadata) are rare
    assert set(summary["kinds"]) == set(fuzz_module.KINDS)


def test_fuzz_refuses_a_dishonest_baseline(
    fuzz_module: ModuleType, kit: ProofKit, tmp_path: Path
) -> None:
    """If the 'honest' proof does not verify, every rejection would be meaningless."""
    broken = kit.copy_proof(tmp_path / "broken")
    (broken / "model.sig").write_bytes(b"{}")
    honest = fuzz_module.Honest(
        broken, kit.keys / "owner.pub", kit.work.model, kit.work.test, kit.now
    )
    with pytest.raises(SystemExit, match="does not verify"):
        fuzz_module.fuzz(honest, mutations=1, seed=0, work=tmp_path / "w")
