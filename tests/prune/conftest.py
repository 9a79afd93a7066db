"""Options for the owner-side tests: ``--update-golden`` rewrites the golden format files under
tests/prune/golden/ instead of comparing against them (review the diff before committing)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/prune/golden/* from the current code instead of comparing",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden", default=False))
