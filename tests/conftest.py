"""Determinism for the whole suite, on any machine: one intra-op thread (float reductions are
split differently with more threads, so trained weights and sums would depend on the core
count), deterministic torch algorithms, and fixed global seeds before every test (the code takes
generators as parameters; this only pins what a test might leave to the global ones). Child
processes (the CLI end-to-end runs) inherit the thread settings through the environment.

What this cannot pin is the CPU's kernels (AVX2 vs AVX-512 summation order): tests compare floats
with tolerances derived from the arithmetic, or on models built from fixed weights."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402  (after the thread variables, which BLAS reads at load)
import pytest  # noqa: E402
import torch  # noqa: E402

SEED = 0


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


@pytest.fixture(autouse=True)
def _fixed_seeds() -> Iterator[None]:
    random.seed(SEED)
    np.random.seed(SEED)  # pins accidental use of the global generator
    torch.manual_seed(SEED)
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
