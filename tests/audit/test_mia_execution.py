"""Execution backends against real local clusters (127.0.0.1 only): a Ray head plus one worker
node, and a Dask LocalCluster of two workers. Every backend must give the local backend's
weights bit for bit, retry a task whose worker died, and fail with one line naming the model when
a worker keeps dying or a task raises (never a partial result, on the API or through the CLI)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from audit.errors import InputError
from audit.mia import Architecture, TrainingRecipe, train_reference_models
from audit.mia._execution import (
    DaskBackend,
    ExecutionError,
    LocalBackend,
    RayBackend,
    Tasks,
    TrainingJob,
    make_backend,
    open_session,
    reference_tasks,
    warm_worker,
)
from audit.mia._reference import reference_set
from audit.mia._train import TrainedWeights
from tests.audit import _dying
from tests.audit._clusters import dask_cluster, ray_cluster
from tests.audit.test_mia_cli import _args, work  # noqa: F401  (the fixture)
from tests.audit.test_mia_reference import digits_split

ARCH = Architecture("mlp", (16,), (64,), 10)
RECIPE = TrainingRecipe(epochs=2, batch_size=64)
COUNT = 4


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    pytest.importorskip("ray")
    with ray_cluster(worker_nodes=1) as address:
        yield address


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    pytest.importorskip("distributed")
    import dask

    # one lost-worker retry, then KilledWorker: keeps the "keeps dying" test short
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), dask_cluster() as addr:
        yield addr


@pytest.fixture
def address(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_address"))


@pytest.fixture(scope="module")
def job() -> TrainingJob:
    split = digits_split(3)
    x, y = split.reference.x[:400], split.reference.y[:400]
    rng = np.random.default_rng(0)
    return TrainingJob(
        architecture=ARCH,
        recipe=RECIPE,
        x=x,
        y=y,
        candidates_x=x[:0],
        candidates_y=y[:0],
        in_reference=rng.random((COUNT, len(x))) < 0.5,
        in_candidates=np.zeros((COUNT, 0), dtype=bool),
        seeds=tuple(range(100, 100 + COUNT)),
    )


@pytest.fixture(scope="module")
def local_weights(job: TrainingJob) -> list[TrainedWeights]:
    return LocalBackend("sequential").map(reference_tasks(job), jobs=1, address=None)


def assert_identical(got: list[TrainedWeights], want: list[TrainedWeights]) -> None:
    assert [w.index for w in got] == list(range(COUNT))
    for a, b in zip(got, want, strict=True):
        assert a.state.keys() == b.state.keys()
        for name in a.state:
            np.testing.assert_array_equal(a.state[name], b.state[name], strict=True)
        assert a.train_accuracy == b.train_accuracy


def backend_of(name: str) -> RayBackend | DaskBackend:
    return RayBackend() if name == "ray" else DaskBackend()


def dying(
    task: Callable[[TrainingJob, int], TrainedWeights], job: TrainingJob
) -> Tasks[TrainingJob, TrainedWeights]:
    return Tasks(task, job, job.count, what="reference model")


@pytest.mark.parametrize("address", ["ray", "dask"], indirect=True)
def test_cluster_gives_the_local_weights_bit_for_bit(
    request: pytest.FixtureRequest,
    address: str,
    job: TrainingJob,
    local_weights: list[TrainedWeights],
) -> None:
    name = request.node.callspec.params["address"]
    seen: list[int] = []
    got = backend_of(name).map(
        reference_tasks(job), jobs=2, address=address, on_result=lambda k, r: seen.append(k)
    )
    assert_identical(got, local_weights)
    assert sorted(seen) == list(range(COUNT))
    # each task timed itself on a worker of the cluster, not in this process
    assert all(w.seconds > 0 and w.cpu_seconds > 0 for w in got)
    assert all(w.worker and not w.worker.endswith(f":{os.getpid()}") for w in got)


@pytest.mark.parametrize("address", ["ray", "dask"], indirect=True)
def test_reference_sets_match_the_local_backend(
    request: pytest.FixtureRequest, address: str
) -> None:
    """Through the public entry point, online (candidates) included: same masks, same logits."""
    split = digits_split(4)
    name = request.node.callspec.params["address"]

    def run(**where: object):
        refs = train_reference_models(
            split.reference.x[:300],
            split.reference.y[:300],
            architecture=ARCH,
            count=2,
            recipe=RECIPE,
            seed=7,
            candidates=(split.members.x[:40], split.members.y[:40]),
            **where,  # type: ignore[arg-type]
        )
        return refs.logits(split.non_members.x, split.non_members.y), refs.in_candidates

    base_logits, base_mask = run(backend="local", jobs=1)
    logits, mask = run(backend=name, address=address, jobs=2)
    np.testing.assert_array_equal(mask, base_mask)
    np.testing.assert_array_equal(logits, base_logits)


@pytest.mark.parametrize("address", ["ray", "dask"], indirect=True)
def test_a_lost_worker_is_retried(
    request: pytest.FixtureRequest,
    address: str,
    job: TrainingJob,
    local_weights: list[TrainedWeights],
    tmp_path: Path,
) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(_dying)
    name = request.node.callspec.params["address"]
    marker = tmp_path / "died"
    task = functools.partial(_dying.die_once, marker, 1)
    got = backend_of(name).map(dying(task, job), jobs=2, address=address)
    assert marker.exists(), "the worker never died: the test is vacuous"
    assert_identical(got, local_weights)


@pytest.mark.parametrize("address", ["ray", "dask"], indirect=True)
def test_a_worker_that_keeps_dying_fails_the_run_naming_the_model(
    request: pytest.FixtureRequest, address: str, job: TrainingJob
) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(_dying)
    name = request.node.callspec.params["address"]
    task = functools.partial(_dying.always_die, 2)
    seen: list[int] = []
    with pytest.raises(
        ExecutionError, match=f"^reference model 2 failed on the {name} backend"
    ) as caught:
        backend_of(name).map(
            dying(task, job), jobs=2, address=address, on_result=lambda k, r: seen.append(k)
        )
    assert "\n" not in str(caught.value)
    assert 2 not in seen  # progress never counted the lost model


@pytest.mark.parametrize("address", ["ray", "dask"], indirect=True)
def test_a_task_that_raises_is_not_retried_and_is_named(
    request: pytest.FixtureRequest, address: str, job: TrainingJob, tmp_path: Path
) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(_dying)
    name = request.node.callspec.params["address"]
    task = functools.partial(_dying.always_raise, tmp_path, 1)
    with pytest.raises(ExecutionError, match=f"^reference model 1 failed on the {name} backend"):
        backend_of(name).map(dying(task, job), jobs=2, address=address)
    assert len(list(tmp_path.iterdir())) == 1  # the same inputs would raise again


def test_the_local_backend_names_a_task_that_raises(job: TrainingJob, tmp_path: Path) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(_dying)
    task = functools.partial(_dying.always_raise, tmp_path, 3)
    for flavour in ("loky", "threading", "sequential"):
        with pytest.raises(ExecutionError) as caught:
            LocalBackend(flavour).map(dying(task, job), jobs=2, address=None)
        assert str(caught.value) == (
            "reference model 3 failed on the local backend (ValueError: second line of the message)"
        ), flavour


def test_a_dead_local_worker_fails_the_run_naming_what_did_not_finish(job: TrainingJob) -> None:
    import cloudpickle

    cloudpickle.register_pickle_by_value(_dying)
    task = functools.partial(_dying.always_die, 2)
    seen: list[int] = []
    with pytest.raises(ExecutionError) as caught:
        LocalBackend("loky").map(
            dying(task, job), jobs=2, address=None, on_result=lambda k, r: seen.append(k)
        )
    message = str(caught.value)
    assert "\n" not in message
    assert (
        message.startswith("reference models [")
        and "did not finish on the local backend" in message
    )
    unfinished = [int(k) for k in message.split("[", 1)[1].split("]", 1)[0].split(",")]
    assert 2 in unfinished and not set(unfinished) & set(seen)
    assert sorted(unfinished + seen) == list(range(COUNT))


@pytest.mark.parametrize("address", ["ray", "dask"], indirect=True)
def test_a_session_is_reused_by_every_map_inside_it(
    request: pytest.FixtureRequest, address: str
) -> None:
    """``open_session`` on a cluster: maps inside it (without an address) run on that
    cluster's workers and leave the session open, instead of starting a cluster of their own."""
    name = request.node.callspec.params["address"]
    with open_session(name, jobs=2, address=address):
        ran = backend_of(name).map(Tasks(warm_worker, None, 4), jobs=2, address=None)
        pids = {int(w.rsplit(":", 1)[1]) for w in ran}
        if name == "ray":
            import ray

            assert ray.is_initialized()  # the map did not close the session
            assert sum(1 for n in ray.nodes() if n["Alive"]) == 2  # head and worker node
        else:
            import distributed

            client = distributed.get_client()
            assert client.scheduler.address == address
            assert pids <= set(client.run(os.getpid).values())
    assert os.getpid() not in pids
    if name == "ray":
        import ray

        assert not ray.is_initialized()


def test_a_started_dask_cluster_is_quiet_and_keeps_the_auditors_environment(
    job: TrainingJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster the dask backend starts for a run: workers keep glibc's trim threshold (the
    nanny's 65536 costs about +40% CPU per model), the BLAS thread
    variables stay at 1, the worker's event loop runs no statistical profiler, and the nanny
    (which runs in the auditor's process) leaves the auditor's environment as it found it."""
    pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(_dying)
    names = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "PYTHONHASHSEED")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    with open_session("dask", jobs=1, address=None):
        assert dict(os.environ) == before
        [env] = DaskBackend().map(Tasks(_dying.environment, names, 1), jobs=1, address=None)
        [callbacks] = DaskBackend().map(
            Tasks(_dying.periodic_callbacks, None, 1), jobs=1, address=None
        )
    assert dict(os.environ) == before
    assert env["MALLOC_TRIM_THRESHOLD_"] is None and env["OMP_NUM_THREADS"] == "1"
    assert "heartbeat" in callbacks and "memory_monitor" in callbacks
    assert not {"profile", "profile-cycle"} & set(callbacks)


def test_a_reference_set_takes_exactly_the_jobs_models(
    job: TrainingJob, local_weights: list[TrainedWeights]
) -> None:
    refs = reference_set(job, local_weights, seed=0, backend="local")
    assert refs.count == COUNT and refs.train_accuracy == tuple(
        w.train_accuracy for w in local_weights
    )
    for tampered in (local_weights[::-1], local_weights[:-1], [*local_weights, local_weights[0]]):
        with pytest.raises(InputError, match="do not match the job's reference models"):
            reference_set(job, tampered, seed=0, backend="local")


def test_backend_names_and_address_rules(job: TrainingJob) -> None:
    with pytest.raises(InputError, match="unknown backend 'carrier-pigeon'"):
        make_backend("carrier-pigeon")
    with pytest.raises(InputError, match="--address is for the ray and dask"):
        make_backend("local").map(reference_tasks(job), jobs=1, address="127.0.0.1:1")


def test_an_unreachable_cluster_is_one_line(
    job: TrainingJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("distributed")
    from audit.mia import _execution
    from tests.audit._clusters import free_port

    monkeypatch.setattr(_execution, "CONNECT_TIMEOUT_S", 2)
    with pytest.raises(InputError, match=r"cannot start or reach tcp://127\.0\.0\.1"):
        DaskBackend().map(reference_tasks(job), jobs=1, address=f"tcp://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("address", ["ray", "dask"], indirect=True)
def test_audit_mia_on_a_cluster_prints_the_local_result(
    request: pytest.FixtureRequest,
    address: str,
    work: Path,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    """``audit mia --backend B --address A``: the same attack results as the local backend."""
    from click.testing import CliRunner

    from audit.cli import cli

    name = request.node.callspec.params["address"]
    docs = []
    for where in (["--backend", "local"], ["--backend", name, "--address", address]):
        out = tmp_path / f"{where[1]}.json"
        args = _args(work, "--attack", "lira", "--json", str(out), "--device", "cpu", *where)
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        docs.append(json.loads(out.read_text()))
    local, remote = ({k: v for k, v in d.items() if k not in ("created", "inputs")} for d in docs)
    assert local["models"] == remote["models"]


@pytest.mark.parametrize("address", ["ray", "dask"], indirect=True)
def test_audit_mia_with_a_worker_that_keeps_dying_is_one_line_and_writes_nothing(
    request: pytest.FixtureRequest,
    address: str,
    work: Path,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through ``audit mia``: exit 2, one line naming the lost model, no JSON (the attack
    results of the models that did train are never reported)."""
    import cloudpickle
    from click.testing import CliRunner

    from audit.cli import cli
    from audit.mia import _reference, _runner

    cloudpickle.register_pickle_by_value(_dying)
    name = request.node.callspec.params["address"]
    # an earlier test of this process may have trained the same offline reference set on this
    # cluster: the process-wide cache would answer without asking the (dying) workers
    monkeypatch.setattr(_runner, "_TRAINED", {})

    def lose_model_one(job: TrainingJob) -> Tasks[TrainingJob, TrainedWeights]:
        return dying(functools.partial(_dying.always_die, 1), job)

    monkeypatch.setattr(_reference, "reference_tasks", lose_model_one)
    out = tmp_path / "mia.json"
    args = _args(work, "--attack", "lira", "--json", str(out), "--device", "cpu")
    result = CliRunner().invoke(cli, [*args, "--backend", name, "--address", address])
    assert result.exit_code == 2, result.output
    [error] = result.stderr.strip().splitlines()  # one line, the only one on stderr
    assert error.startswith(f"audit: error: reference model 1 failed on the {name} backend")
    # stdout holds no result; on Ray, the driver prints the raylet's own reports of the dead
    # workers there as they happen (a thread of ray's, whatever log_to_driver says)
    others = [line for line in result.stdout.splitlines() if line.strip()]
    assert all("(raylet)" in line for line in others), others
    assert name == "ray" or not others
    assert "Traceback" not in result.output
    assert not out.exists()


def test_the_training_device_is_a_parameter() -> None:
    import torch

    from audit.mia._train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="unknown training device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.gpu
def test_reference_models_train_on_cuda_and_come_back_as_cpu_arrays(
    job: TrainingJob, local_weights: list[TrainedWeights]
) -> None:
    import dataclasses

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    on_gpu = dataclasses.replace(job, device="cuda")
    got = LocalBackend("sequential").map(reference_tasks(on_gpu), jobs=1, address=None)
    for a, b in zip(got, local_weights, strict=True):
        assert a.device == "cuda"
        assert {k: v.shape for k, v in a.state.items()} == {k: v.shape for k, v in b.state.items()}
        assert all(isinstance(v, np.ndarray) for v in a.state.values())
        assert abs(a.train_accuracy - b.train_accuracy) < 0.1  # CUDA kernels: not bit-identical
