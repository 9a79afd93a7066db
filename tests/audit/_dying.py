"""Worker tasks for the execution-backend tests: tasks that kill their own process or raise (how
the backends handle a lost worker and a failing task), and one that reports its worker's
environment. Shipped to the workers by value (the workers need not import ``tests``)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from audit.mia._execution import TrainingJob, run_task
from audit.mia._train import TrainedWeights


def die_once(marker: Path, victim: int, job: TrainingJob, k: int) -> TrainedWeights:
    """Model ``victim``'s first attempt kills its worker; the retry trains normally."""
    if k == victim and not marker.exists():
        marker.touch()
        os._exit(1)
    return run_task(job, k)


def always_die(victim: int, job: TrainingJob, k: int) -> TrainedWeights:
    if k == victim:
        os._exit(1)
    return run_task(job, k)


def always_raise(attempts: Path, victim: int, job: TrainingJob, k: int) -> TrainedWeights:
    """Model ``victim`` raises (its worker lives on); each attempt leaves a file in ``attempts``."""
    if k == victim:
        (attempts / uuid.uuid4().hex).touch()
        raise ValueError(f"model {victim} refuses to train\nsecond line of the message")
    return run_task(job, k)


def environment(names: tuple[str, ...], k: int) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def periodic_callbacks(shared: object, k: int) -> list[str]:
    """The periodic callbacks of the Dask worker that runs this task (its event loop's work)."""
    from distributed import get_worker

    worker = get_worker()
    return sorted(name for name, pc in worker.periodic_callbacks.items() if pc.is_running())
