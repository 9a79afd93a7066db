"""Where the auditor's reference models are trained: the execution backends.

A backend maps ``count`` independent tasks ``task(shared, k)`` (:class:`Tasks`) over workers:
the shared part goes to the workers **once** (Ray's object store, a Dask scatter, joblib's
memory maps) and each task's result comes back as arrays, in task order. Reference-model
training is one such map (:class:`TrainingJob`, :func:`run_task`); the benchmark study's cells
are another.

* ``local``: joblib on this machine (``loky`` processes; ``threading`` and ``sequential`` are the
  other joblib flavours, kept as names of their own);
* ``ray``: Ray tasks on the cluster at ``address`` (``ray.init(address=...)``; ``RAY_ADDRESS`` is
  honoured), or a local Ray started for the run;
* ``dask``: Dask distributed at ``address`` (``Client(address)``), or the current client, or a
  local cluster started for the run.

Invariants every backend keeps:

* the same seeds give bit-identical weights on every backend, because each task is fully
  determined by its inputs: the torch seed, the data order and the thread count (``threads``,
  fixed *inside* the task) travel with it, and nothing reads the worker's global state;
* a lost worker's task is retried (Ray ``max_retries``; Dask reschedules the tasks of a lost
  worker up to ``distributed.scheduler.allowed-failures`` times, and the shared data is
  replicated on every worker); a task that still fails ends the run with one line naming it and
  the backend, and the remaining tasks are cancelled: partial results are never returned. A task
  that raises is not retried (the same inputs raise again) and is named the same way. The local
  backend does not retry: a joblib worker that dies ends the run naming the tasks that had not
  finished (loky does not say which one the dead process was running);
* each task times itself inside the worker (:attr:`TrainedWeights.seconds`, ``cpu_seconds``,
  ``worker``), so a run's overhead is its wall time minus the training it did;
* ``device`` (``auto``, ``cpu``, ``cuda``) is resolved on the worker: ``auto`` trains on CUDA
  where the worker has a GPU (Ray tasks then ask for one). Bit-identity is a CPU guarantee;
  CUDA kernels need not be deterministic, and the CUDA path has not been run on a GPU here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._arch import Architecture
from audit.mia._train import TrainedWeights, TrainingRecipe, train_model

__all__ = [
    "BACKENDS",
    "Backend",
    "ExecutionError",
    "Tasks",
    "TrainingJob",
    "make_backend",
    "open_session",
    "reference_tasks",
    "run_task",
    "warm_worker",
]

RETRIES = 2
"""How often a task whose worker died is run again before the run fails (Ray; Dask's scheduler
has its own ``distributed.scheduler.allowed-failures``)."""

CONNECT_TIMEOUT_S = 20
"""How long to wait for a Dask scheduler at ``address``."""

PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
"""Dask's config of the environment its nanny gives worker processes."""

QUIET_DASK: dict[str, object] = {
    # the worker's statistical profiler samples every thread's stack on the event loop every
    # 10 ms, for a dashboard we do not start
    "distributed.worker.profile.enabled": False,
    # every server (each worker, each nanny, the scheduler) checks its event loop every 20 ms
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    # the nanny's default makes glibc hand every freed batch back to the kernel and fault it in
    # again: about +40% CPU per reference model (benchmarks/cluster_diagnose.py)
    f"{PRE_SPAWN}.MALLOC_TRIM_THRESHOLD_": None,
}
"""Dask config of the local cluster the dask backend starts. A Dask worker runs its task on a
thread, and by default its event loop wakes more than 160 times a second (profiler, tick, memory
and system monitors): every wake-up takes the GIL from the training thread, and on a machine whose
cores all train, a core from a training worker (``benchmarks/dask_worker_probe.py`` compares this
config with Dask's defaults). The BLAS thread variables stay at the nanny's 1 (torch's thread
count is fixed inside each task)."""


class ExecutionError(InputError):
    """A task could not be completed on the chosen backend (after its retries)."""


@dataclass(frozen=True, eq=False)
class TrainingJob:
    """Everything the tasks share; task ``k`` trains on reference rows ``in_reference[k]`` plus
    candidate rows ``in_candidates[k]`` with torch seed ``seeds[k]``."""

    architecture: Architecture
    recipe: TrainingRecipe
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    candidates_x: NDArray[np.float32]
    candidates_y: NDArray[np.int64]
    in_reference: NDArray[np.bool_]
    in_candidates: NDArray[np.bool_]
    seeds: tuple[int, ...]
    threads: int = 1
    device: str = "cpu"

    @property
    def count(self) -> int:
        return len(self.seeds)


def run_task(job: TrainingJob, k: int) -> TrainedWeights:
    """Train reference model ``k`` of ``job`` (what every backend runs on a worker), timed from
    inside the worker: wall and process-CPU seconds of the whole task, and which process ran it."""
    start, cpu = time.perf_counter(), time.process_time()
    tx = np.concatenate([job.x[job.in_reference[k]], job.candidates_x[job.in_candidates[k]]])
    ty = np.concatenate([job.y[job.in_reference[k]], job.candidates_y[job.in_candidates[k]]])
    trained = train_model(
        job.architecture,
        tx,
        ty,
        recipe=job.recipe,
        seed=job.seeds[k],
        index=k,
        threads=job.threads,
        device=job.device,
    )
    return dataclasses.replace(
        trained,
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu,
        worker=_worker_name(),
    )


def warm_worker(shared: object, k: int) -> str:
    """Pay a worker process's one-time costs before it is timed: import torch and build one
    optimiser (torch.optim imports torch._dynamo, several hundred modules, on first use; that
    is 2-5 s of CPU per process on the 2-core machine). Returns the worker's name."""
    import torch

    module = torch.nn.Linear(1, 1)
    torch.optim.Adam(module.parameters())
    return _worker_name()


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


S = TypeVar("S")
R = TypeVar("R")


@dataclass(frozen=True)
class Tasks(Generic[S, R]):
    """``count`` independent tasks ``task(shared, k)``. ``what`` names one task in messages;
    ``cpus`` and ``device`` are what each task needs from a worker."""

    task: Callable[[S, int], R]
    shared: S
    count: int
    what: str = "task"
    cpus: int = 1
    device: str = "cpu"


def _ignore(k: int, result: object) -> None:
    return None


class Backend(Protocol):
    name: ClassVar[str]

    def map(
        self,
        tasks: Tasks[S, R],
        *,
        jobs: int,
        address: str | None,
        on_result: Callable[[int, R], None] = _ignore,
    ) -> list[R]:
        """Every task's result in task order (``on_result`` sees each as it arrives), or raise
        :class:`ExecutionError`."""
        ...


def reference_tasks(job: TrainingJob) -> Tasks[TrainingJob, TrainedWeights]:
    return Tasks(
        run_task, job, job.count, what="reference model", cpus=job.threads, device=job.device
    )


def _failed(backend: str, what: str, k: int, exc: BaseException) -> ExecutionError:
    return ExecutionError(
        f"{what} {k} failed on the {backend} backend ({type(exc).__name__}: {_last_line(exc)})"
    )


def _in_order(tasks: Tasks[S, R], done: dict[int, R]) -> list[R]:
    missing = [k for k in range(tasks.count) if k not in done]
    if missing:  # a backend bug, never a partial result
        raise ExecutionError(f"{tasks.what}s {missing} did not come back")
    return [done[k] for k in range(tasks.count)]


class _TaskFailed(Exception):
    """Task ``k`` raised (on a joblib worker): carries which task it was, which joblib's own
    re-raise does not say."""

    def __init__(self, k: int, kind: str, line: str) -> None:
        super().__init__(k, kind, line)
        self.k, self.kind, self.line = k, kind, line

    def __str__(self) -> str:
        return f"{self.kind}: {self.line}"


def _indexed(task: Callable[[S, int], R], shared: S, k: int) -> tuple[int, R]:
    try:
        return k, task(shared, k)
    except InputError:
        raise
    except Exception as exc:
        raise _TaskFailed(k, type(exc).__name__, _last_line(exc)) from None


@dataclass(frozen=True)
class LocalBackend:
    """joblib on this machine; ``flavour`` is the joblib backend."""

    name: ClassVar[str] = "local"
    flavour: str = "loky"

    def map(
        self,
        tasks: Tasks[S, R],
        *,
        jobs: int,
        address: str | None,
        on_result: Callable[[int, R], None] = _ignore,
    ) -> list[R]:
        import joblib

        if address is not None:
            raise InputError("--address is for the ray and dask backends")
        done: dict[int, R] = {}
        calls = (joblib.delayed(_indexed)(tasks.task, tasks.shared, k) for k in range(tasks.count))
        with joblib.parallel_config(backend=self.flavour, n_jobs=max(1, min(jobs, tasks.count))):
            stream = joblib.Parallel(return_as="generator_unordered")(calls)
            try:
                for k, result in stream:
                    done[k] = result
                    on_result(k, result)
            except InputError:
                raise
            except _TaskFailed as exc:
                raise ExecutionError(
                    f"{tasks.what} {exc.k} failed on the {self.name} backend ({exc})"
                ) from exc
            except Exception as exc:  # a worker process died (loky): it does not say running what
                missing = sorted(set(range(tasks.count)) - set(done))
                raise ExecutionError(
                    f"{tasks.what}s {missing} did not finish on the {self.name} backend: "
                    f"a worker process died ({type(exc).__name__}: {_last_line(exc)})"
                ) from exc
        return _in_order(tasks, done)


@dataclass(frozen=True)
class RayBackend:
    name: ClassVar[str] = "ray"

    def map(
        self,
        tasks: Tasks[S, R],
        *,
        jobs: int,
        address: str | None,
        on_result: Callable[[int, R], None] = _ignore,
    ) -> list[R]:
        ray = _cluster_module("ray", "ray", "the ray package")
        with _ray_session(ray, address=address, jobs=jobs):
            wants_gpu = tasks.device == "cuda" or (
                tasks.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0
            )
            remote = ray.remote(
                num_cpus=tasks.cpus,
                num_gpus=1 if wants_gpu else 0,
                max_retries=RETRIES,
                retry_exceptions=False,
            )(_invoke)
            shared = ray.put(tasks.shared)  # one copy in the object store; tasks take the ref
            pending = {remote.remote(tasks.task, shared, k): k for k in range(tasks.count)}
            done: dict[int, R] = {}
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        k = pending.pop(ref)
                        try:
                            done[k] = _owned(ray.get(ref))
                        except ray.exceptions.RayError as exc:
                            raise _failed(self.name, tasks.what, k, exc) from exc
                        on_result(k, done[k])
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)
        return _in_order(tasks, done)


@contextlib.contextmanager
def open_session(backend: str, *, jobs: int, address: str | None) -> Iterator[None]:
    """Start (or connect to) the backend's cluster once for several :meth:`Backend.map` calls,
    which then reuse it and its warm workers instead of each starting their own: Ray stays
    initialised, the Dask client is the current one. The local backend needs none (joblib keeps
    its loky worker processes between calls)."""
    make_backend(backend)  # an unknown name fails here, with one line
    if backend == "ray":
        with _ray_session(
            _cluster_module("ray", "ray", "the ray package"), address=address, jobs=jobs
        ):
            yield
    elif backend == "dask":
        _cluster_module("dask", "distributed", "dask.distributed")
        with _dask_client(address=address, jobs=jobs) as client, client.as_current():
            yield
    else:
        if address is not None:
            raise InputError("--address is for the ray and dask backends")
        yield


def _cluster_module(backend: str, module: str, what: str) -> Any:
    """The optional package behind a cluster backend, or one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InputError(
            f"backend {backend!r} needs {what}: pip install 'prune-audit[cluster]'"
        ) from exc


def _invoke(task: Callable[[S, int], R], shared: S, k: int) -> R:
    return task(shared, k)


def _owned(result: R) -> R:
    """Ray hands back read-only views of its object store: trained weights get their own arrays."""
    if isinstance(result, TrainedWeights):
        state = {name: np.array(value) for name, value in result.state.items()}
        return cast(R, dataclasses.replace(result, state=state))
    return result


@contextlib.contextmanager
def _ray_session(ray: Any, *, address: str | None, jobs: int) -> Iterator[None]:
    """Connect to ``address`` (or start a local Ray with ``jobs`` CPUs) unless this process is
    already connected; disconnect at the end only from what was opened here."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address is None:
            ray.init(  # "local": a new Ray of our own, never one found running on this host
                address="local",
                num_cpus=jobs,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                **quiet,
            )
        elif address.rsplit(":", 1)[0].split("//")[-1] in ("127.0.0.1", "localhost"):
            # a cluster on the loopback interface: this driver is one of its hosts, reached there
            ray.init(address=address, _node_ip_address="127.0.0.1", **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:
        where = address or "a local Ray"
        raise InputError(f"cannot start or reach {where}: {_last_line(exc)}") from exc
    try:
        yield
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class DaskBackend:
    name: ClassVar[str] = "dask"

    def map(
        self,
        tasks: Tasks[S, R],
        *,
        jobs: int,
        address: str | None,
        on_result: Callable[[int, R], None] = _ignore,
    ) -> list[R]:
        distributed = _cluster_module("dask", "distributed", "dask.distributed")
        with _dask_client(address=address, jobs=jobs) as client:
            run_id = uuid.uuid4().hex
            # sent once to each worker (a replica survives the loss of one); tasks take the future
            [shared] = client.scatter([tasks.shared], hash=False, broadcast=True)
            futures: dict[Any, int] = {}

            def submit(k: int) -> Any:
                future = client.submit(
                    tasks.task, shared, k, pure=False, key=f"{tasks.what}-{k}-{run_id}"
                )
                futures[future] = k
                return future

            # no more tasks in flight than the cluster has threads: a task queued on a worker
            # behind one that kills it would be charged with the death too (KilledWorker)
            slots = max(1, sum(client.nthreads().values()))
            waiting = iter(range(tasks.count))
            queue = distributed.as_completed(
                [submit(k) for k in itertools.islice(waiting, slots)], loop=client.loop
            )
            done: dict[int, R] = {}
            try:
                for future in queue:
                    k = futures[future]
                    try:
                        done[k] = future.result()
                    except Exception as exc:  # KilledWorker after the retries, or the task's own
                        culprit, cause = _dask_culprit(distributed, futures, k, exc)
                        raise _failed(self.name, tasks.what, culprit, cause) from exc
                    on_result(k, done[k])
                    following = next(waiting, None)
                    if following is not None:
                        queue.add(submit(following))
            finally:
                client.cancel([f for f in futures if not f.done()])
        return _in_order(tasks, done)


def _dask_culprit(
    distributed: Any, futures: dict[Any, int], k: int, exc: BaseException
) -> tuple[int, BaseException]:
    """The task to name when task ``k`` failed with ``exc``: a task cancelled because its
    workers (and the shared data they held) died is a consequence; name the task that killed
    them (``KilledWorker``) once the scheduler has settled, if there is one."""
    if not isinstance(exc, distributed.client.FutureCancelledError):
        return k, exc
    with contextlib.suppress(Exception):
        distributed.wait([f for f in futures if not f.done()], timeout=CONNECT_TIMEOUT_S)
    for future, j in futures.items():
        if future.status == "error":
            return j, future.exception()
    return k, exc


@contextlib.contextmanager
def _dask_client(*, address: str | None, jobs: int) -> Iterator[Any]:
    """A client to ``address``; else the current client; else a local cluster of ``jobs``
    single-task worker processes for the run (bound to 127.0.0.1)."""
    distributed: Any = importlib.import_module("distributed")
    dask: Any = importlib.import_module("dask")

    if address is None:
        try:
            current = distributed.get_client()
        except ValueError:
            current = None
        if current is not None:
            yield current
            return
    with contextlib.ExitStack() as stack:
        try:
            if address is not None:
                client = distributed.Client(
                    address, set_as_default=False, timeout=f"{CONNECT_TIMEOUT_S}s"
                )
            else:
                # the nanny runs in this process and sets the worker environment here too before
                # each spawn: the auditor's environment is put back when the cluster is up and
                # when it closes (its subprocesses must not inherit OMP_NUM_THREADS=1 and the like)
                environ = dict(os.environ)
                stack.callback(_restore_environ, environ)
                with dask.config.set(QUIET_DASK):
                    cluster = distributed.LocalCluster(
                        n_workers=jobs,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                    )
                stack.callback(cluster.close)
                _restore_environ(environ)
                client = distributed.Client(cluster, set_as_default=False)
        except Exception as exc:
            where = address or "a local Dask cluster"
            raise InputError(f"cannot start or reach {where}: {_last_line(exc)}") from exc
        stack.callback(client.close)
        yield client


def _restore_environ(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _last_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


BACKENDS: dict[str, Callable[[], Backend]] = {
    "local": LocalBackend,
    "ray": RayBackend,
    "dask": DaskBackend,
    **{name: functools.partial(LocalBackend, name) for name in ("loky", "threading", "sequential")},
}
"""Backend names: ``local`` (joblib processes), ``ray``, ``dask``; ``loky``, ``threading`` and
``sequential`` are the local backend with that joblib flavour."""


def make_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise InputError(f"unknown backend {name!r} (choose {', '.join(BACKENDS)})") from None
