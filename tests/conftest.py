"""Fixtures the test packages share: a tiny LeNet-5 on the embedded digits, loaded once."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from autoprune.pipeline.load import Loaded, load_model_and_data

DIGITS_SIZE = (1, 16, 16)  # digits at 16x16: LeNet-5 stays tiny and every test stays fast


@pytest.fixture(scope="session")
def digits_lenet() -> Loaded:
    """LeNet-5 (untrained) and 96 digits images at 1x16x16; copy before changing it."""
    return load_model_and_data(model="lenet5", dataset="digits", input_size=DIGITS_SIZE, limit=96)


def fresh(loaded: Loaded) -> Any:
    """A copy of `loaded` whose model can be trained or masked without touching the original."""
    out = copy.copy(loaded)
    out.model = copy.deepcopy(loaded.model)
    return out


@pytest.fixture(scope="session")
def postgres_server() -> Any:
    """One PostgreSQL server for the session (tests/services.py); skips without the binaries."""
    from services import PostgresServer, missing, postgres_bin

    bindir = postgres_bin()
    if bindir is None:
        missing("PostgreSQL (initdb, pg_ctl: Debian's postgresql package)")
    server = PostgresServer(bindir).start()  # type: ignore[arg-type]
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: Any, request: pytest.FixtureRequest) -> str:
    """A SQLAlchemy URL of a fresh, empty database on the session's PostgreSQL server."""
    import re

    name = re.sub(r"\W", "_", request.node.name.lower())[:50] + f"_{id(request) % 10_000}"
    return str(postgres_server.create_database(name))
