"""Every contract test runs on SQLite, PostgreSQL and MariaDB, each on a freshly migrated schema.

The servers are the suite's (TEST_POSTGRESQL_URL, TEST_MYSQL_URL); the database
``ledger_test`` (with the run's suffix, see tests/conftest.py) is created once per run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_asyncdb import Database
from ledger.app import create_app
from tests.conftest import BACKENDS, prepare_server
from tests.ledger.blocking_ledger import BlockingLedger
from tests.ledger.ledger_api import LedgerApi


@dataclass(frozen=True)
class Backend:
    name: str
    url: str | None  # None: a new SQLite file per test


@pytest.fixture(params=BACKENDS)
def ledger_backend(request: pytest.FixtureRequest) -> Backend:
    name: str = request.param
    if name == "sqlite":
        return Backend(name, None)
    return Backend(name, prepare_server(name, "ledger_test"))


@pytest.fixture
async def empty_database_url(ledger_backend: Backend, tmp_path: Path) -> str:
    """The URL of an empty database: no tables, no Alembic version."""
    if ledger_backend.url is None:
        return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    engine = create_async_engine(ledger_backend.url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("DROP TABLE IF EXISTS transfers, accounts, alembic_version")
            )
    finally:
        await engine.dispose()
    return ledger_backend.url


@pytest.fixture
def database(empty_database_url: str) -> Database:
    # Room for the concurrency tests' 40 simultaneous transfers without queueing at the gate.
    return Database(
        url=empty_database_url,
        pool_size=10,
        max_overflow=40,
        read_pool_size=2,
        read_max_overflow=8,
        pool_timeout=20,
    )


@pytest.fixture
async def app(database: Database) -> AsyncIterator[FastAPI]:
    app = create_app(database, migrate_on_startup=True)
    # ASGITransport does not run the lifespan; the real one migrates and starts the pools.
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[LedgerApi]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as client:
        yield LedgerApi(client)


@pytest.fixture
def blocking_ledger(database: Database) -> Iterator[BlockingLedger]:
    """The app started on a loop of its own, for synchronous Hypothesis tests."""
    with BlockingLedger(database) as ledger:
        yield ledger
