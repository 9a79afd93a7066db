"""Hostile models against the sandbox: refused before any run when their cost cannot be bounded,
stopped by the worker's hard limits when it can be but is still too much."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from audit.runtime import OnnxModel
from audit.sandbox import (
    ModelRunError,
    Sandbox,
    SandboxLimitError,
    SandboxLimits,
    UnsafeModelError,
    admit,
)
from tests.audit.hostile import models

MiB = 1 << 20


@pytest.fixture
def box() -> Sandbox:
    sandbox = Sandbox(SandboxLimits(max_memory=1024 * MiB, timeout=3.0, cpu_seconds=60))
    yield sandbox
    sandbox.close()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (models.loop_2_40, "op Loop is not on the auditor's list"),
        (models.constant_of_shape, r"over the .*-byte budget"),
        (models.data_dependent_shape, "data-dependent shape"),
        (models.batch_squared, "does not grow linearly with the batch"),
        (models.custom_domain, "domain 'com.microsoft'"),
        (models.mod_on_data, "op Mod is admitted only on constant inputs"),
        (models.shape_mod_by_zero, "op Mod is admitted only on constant inputs"),
        (models.tree_cycle, "a cycle or a dangling id"),
        (models.tree_dangling, "a cycle or a dangling id"),
        (models.tree_targets, "n_targets must be 1 to"),
    ],
)
def test_unbounded_graphs_are_refused_before_any_run(build, match, box: Sandbox) -> None:
    start = time.monotonic()
    with pytest.raises(UnsafeModelError, match=match):
        OnnxModel(build(), sandbox=box)
    assert time.monotonic() - start < 5
    assert box._worker is None  # nothing was started: the graph never reached onnxruntime


def test_a_bounded_tree_ensemble_is_admitted_and_runs(box: Sandbox) -> None:
    """The tree gate's router: one acyclic tree, each row walked alone."""
    model = OnnxModel(models.tree_honest(), sandbox=box)
    x = np.asarray([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0.0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(model.run(x)[0][:, 0], [1.0, 2.0, 1.0])


def test_constant_shape_arithmetic_is_folded_and_run_as_signed(box: Sandbox) -> None:
    """A shape computed by ``Mod`` of constants (the legacy exporter's ``nn.Unflatten``) is
    admitted: the admission evaluates it; the sandbox runs the graph as it is."""
    model = OnnxModel(models.shape_by_mod(), sandbox=box)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(model.run(x)[0], x.reshape(3, 2, 2))


def test_legacy_exported_unflatten_is_admitted(box: Sandbox) -> None:
    import io

    import torch

    net = torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()
    ).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        net, (torch.zeros(2, 64),), buf, dynamo=False, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
    )  # fmt: skip
    assert "Mod" in {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    got = OnnxModel(buf.getvalue(), sandbox=box).logits(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_external_data_is_refused_and_never_read(tmp_path: Path, box: Sandbox, monkeypatch) -> None:
    (tmp_path / "secret").write_bytes(b"S" * 64)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeModelError, match="external data"):
        OnnxModel(models.external_data("secret"), sandbox=box)


def test_honest_model_runs_and_batches_share_one_worker(box: Sandbox) -> None:
    first = OnnxModel(models.honest_linear(), sandbox=box)
    second = OnnxModel(models.honest_linear(), sandbox=box)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.testing.assert_array_equal(first.logits(x), x[:, :3])
    np.testing.assert_array_equal(second.logits(x, batch_size=3), x[:, :3])
    assert first._worker is second._worker


def test_wall_clock_limit_kills_the_worker_and_fails_later_calls(box: Sandbox) -> None:
    """One request of ~2 TFLOP on one thread (minutes on any CPU), sent whole: ``OnnxModel``
    would cut it into budget-sized calls that a fast, idle machine may finish inside the limit."""
    worker, answer = box.load(
        models.matmul_chain(depth=256), providers=["CPUExecutionProvider"], threads=1
    )
    start = time.monotonic()
    with pytest.raises(SandboxLimitError, match="3 s wall-clock limit"):
        box.run(worker, int(answer["id"]), np.ones((4096, 1024), np.float32), ["y"],
                max_bytes=64 * MiB)  # fmt: skip
    assert time.monotonic() - start < 10
    with pytest.raises(SandboxLimitError, match="wall-clock"):
        box.run(worker, int(answer["id"]), np.ones((1, 1024), np.float32), ["y"],
                max_bytes=64 * MiB)  # fmt: skip
    fresh = OnnxModel(models.honest_linear(), sandbox=box)  # a new load gets a new worker
    assert fresh.logits(np.ones((1, 4), np.float32)).shape == (1, 3)


def test_memory_limit_is_a_failed_run_not_a_crash(box: Sandbox) -> None:
    """Bypasses the admission test on purpose: the worker's address-space cap alone must stop a
    36 GB allocation."""
    worker, answer = box.load(
        models.constant_of_shape(), providers=["CPUExecutionProvider"], threads=1
    )
    with pytest.raises(SandboxLimitError, match=r"memory limit|died"):
        box.run(worker, int(answer["id"]), np.ones((1, 4), np.float32), ["y"], max_bytes=MiB)


def test_cpu_limit_ends_the_worker() -> None:
    sandbox = Sandbox(SandboxLimits(max_memory=1024 * MiB, timeout=60.0, cpu_seconds=1))
    try:
        model = OnnxModel(models.matmul_chain(), sandbox=sandbox, threads=1)
        with pytest.raises(SandboxLimitError, match="CPU-time limit"):
            for _ in range(50):
                model.logits(np.ones((4096, 1024), np.float32))
    finally:
        sandbox.close()


def test_nan_logits_come_back_as_nan(box: Sandbox) -> None:
    out = OnnxModel(models.nan_logits(), sandbox=box).logits(np.ones((2, 4), np.float32))
    assert np.isnan(out).all()


def test_model_errors_are_model_run_errors(box: Sandbox) -> None:
    with pytest.raises(ModelRunError, match="not an ONNX model"):
        OnnxModel(b"\x00garbage", sandbox=box)


def test_admission_reports_the_declared_cost() -> None:
    cost = admit(onnx.load_from_string(models.honest_linear()), budget=MiB)
    assert (cost.per_sample, cost.fixed, cost.batch) == (28, 0, None)
    assert cost.max_rows(MiB) == MiB // 28


def test_worker_limits_are_validated() -> None:
    from audit.errors import InputError

    with pytest.raises(InputError):
        SandboxLimits(max_memory=MiB)
    with pytest.raises(InputError):
        SandboxLimits(timeout=0)
    assert os.path.exists(Path(models.__file__))
