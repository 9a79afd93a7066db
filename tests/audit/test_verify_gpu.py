"""onnxruntime's CUDA provider: used when present, refused as a usage error when asked for and
absent. The ``gpu`` test needs onnxruntime-gpu and a device (``pip install .[gpu]``)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from audit.cli import cli
from audit.errors import InputError
from audit.verify import verify_proof
from tests.audit.adversarial.kit import ProofKit, session_kit

HAVE_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="onnxruntime has no CUDA provider here")
def test_cuda_verification_matches_cpu(kit: ProofKit) -> None:
    gpu = verify_proof(kit.inputs(), now=kit.now, rng=np.random.default_rng(0), device="cuda")
    cpu = verify_proof(kit.inputs(), now=kit.now, rng=np.random.default_rng(0), device="cpu")
    assert gpu.verified and cpu.verified
    assert gpu.settings["providers"][0] == "CUDAExecutionProvider"
    assert [o.status for o in gpu.outcomes] == [o.status for o in cpu.outcomes]


@pytest.mark.skipif(HAVE_CUDA, reason="a CUDA provider is present")
def test_cuda_asked_for_without_provider_is_a_usage_error(kit: ProofKit) -> None:
    with pytest.raises(InputError, match="no CUDA provider"):
        verify_proof(kit.inputs(), now=kit.now, rng=np.random.default_rng(0), device="cuda")
    result = CliRunner().invoke(
        cli,
        ["verify", str(kit.proof), "--public-key", str(kit.keys / "owner.pub"), "--device", "cuda"],
    )
    assert result.exit_code == 2 and "no CUDA provider" in result.output


def test_auto_device_reports_its_provider(kit: ProofKit) -> None:
    report = verify_proof(kit.inputs(), now=kit.now, rng=np.random.default_rng(0), device="auto")
    expected = "CUDAExecutionProvider" if HAVE_CUDA else "CPUExecutionProvider"
    assert report.settings["providers"][0] == expected
