"""Real local clusters for the execution-backend tests, on 127.0.0.1 only, torn down even when
the test fails: a Ray head and one worker node started with ``ray start --block`` (each in its
own process group, which is what is stopped: never ``ray stop``, which would stop every Ray on
the machine), and a Dask ``LocalCluster`` of two single-thread worker processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["dask_cluster", "free_port", "ray_cluster"]

OBJECT_STORE = 80 * 1024 * 1024  # bytes per node: the job is a few MB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_cli() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        raise RuntimeError("the ray command is not installed next to this Python")
    return found


def _start(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the node's own process group (``ray start --block`` then stops its children),
    SIGKILL whatever is left after a grace period."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def ray_cluster(*, worker_nodes: int = 1, cpus_per_node: int = 1) -> Iterator[str]:
    """Yield the address ``127.0.0.1:PORT`` of a head plus ``worker_nodes`` worker nodes."""
    import ray

    cli, port = _ray_cli(), free_port()
    address = f"127.0.0.1:{port}"
    # Ray >= 2.5x turns token authentication on once ~/.ray/auth_token exists (any local
    # ray.init writes it), and then a node started by `ray start --address` and this process
    # disagree about the token (InvalidAuthToken): these loopback-only test clusters run
    # without it, in their nodes and in this process, whatever an earlier Ray left in HOME.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    previous_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    common = [
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={cpus_per_node}",
        f"--object-store-memory={OBJECT_STORE}",
        "--disable-usage-stats",
        "--block",
    ]
    nodes: list[subprocess.Popen[bytes]] = []
    logs = Path(tempfile.mkdtemp(prefix="ray-test-logs-"))
    try:
        nodes.append(
            _start(
                [cli, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                logs / "head.log",
                env,
            )
        )
        _wait_for_nodes(ray, address, 1, nodes, logs)
        for i in range(worker_nodes):
            nodes.append(
                _start(
                    [cli, "start", f"--address={address}", *common], logs / f"worker{i}.log", env
                )
            )
        _wait_for_nodes(ray, address, 1 + worker_nodes, nodes, logs)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in reversed(nodes):
            _stop(proc)
        shutil.rmtree(logs, ignore_errors=True)
        if previous_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous_mode


def _wait_for_nodes(
    ray: Any, address: str, count: int, procs: list[subprocess.Popen[bytes]], logs: Path
) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a ray node exited: {_tails(logs)}")
        try:
            # as the backend does for a loopback address: Ray would otherwise replace 127.0.0.1
            # with this host's network address, where the nodes do not listen
            ray.init(address=address, log_to_driver=False, _node_ip_address="127.0.0.1")
            alive = sum(1 for n in ray.nodes() if n["Alive"])
        except Exception:
            alive = 0
        finally:
            if ray.is_initialized():
                ray.shutdown()
        if alive >= count:
            return
        time.sleep(1.0)
    raise RuntimeError(f"the ray cluster did not come up: {_tails(logs)}")


def _tails(logs: Path) -> str:
    return " | ".join(f"{p.name}: {p.read_text()[-300:]}" for p in sorted(logs.glob("*.log")))


@contextlib.contextmanager
def dask_cluster(*, workers: int = 2) -> Iterator[str]:
    """Yield the scheduler address of a LocalCluster of single-thread worker processes."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield str(cluster.scheduler_address)
