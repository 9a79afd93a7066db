"""Worker tasks that kill their own process, to test how the backends handle a lost worker.
Shipped to the workers by value (the workers need not import ``tests``)."""

from __future__ import annotations

import os
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
