"""The ledger is tested the way a user's app is: through fastapi-asyncdb's pytest plugin.

Every contract test runs on SQLite, PostgreSQL and MariaDB in one session. The app is
built, and its schema migrated by its own lifespan, once per backend per session (per
xdist worker); each test then runs inside the plugin's rollback isolation
(``Database.isolated()``, through the plugin's ``client`` and ``db`` fixtures), so
nothing it writes reaches the next test. When a backend's app stops, its database must
hold no ledger row: a test whose writes escaped the isolation fails the run there.

The plugin takes one database URL per session (``--asyncdb-url``); to run the three
backends in one session, ``asyncdb_app`` and ``asyncdb_url`` are overridden here with
session fixtures parametrized by backend, and the plugin's own ``asyncdb_database``,
``asyncdb_running_app``, ``asyncdb_isolation``, ``client`` and ``db`` do the rest.

Synchronous tests (Hypothesis's state machine, Schemathesis) use the same isolation:
they wait on the plugin's session loop (``session_loop``) for each request.

Some tests need what one rolled-back connection cannot give, and keep fixtures of their
own on a freshly migrated schema per test (``fresh_api``, ``database``,
``empty_database_url``, ``blocking_ledger``):

- real concurrency between transactions (test_ledger_concurrency.py, and the
  concurrent same-key transfers in test_ledger_transfers.py): inside the isolation,
  units of work of concurrent requests run one after another on the test's
  connection, so no race, lock wait or serialization failure could happen;
- migrations (test_ledger_migrations.py, the startup switch in test_ledger_app.py):
  they start from an empty database, and DDL commits implicitly on MariaDB;
- real server processes and PgBouncer (test_ledger_servers*.py,
  test_ledger_pgbouncer.py): other processes cannot join the test's transaction.

``TEST_LEDGER_ISOLATION=recreate`` replaces the rollback isolation with what the suite
did before it: tables dropped, migrated again and the app started for each test;
tests/ledger/measure.py compares the two.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import URL, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_asyncdb import Database
from ledger.app import create_app
from tests.conftest import BACKENDS, prepare_server
from tests.ledger.blocking_ledger import BlockingLedger
from tests.ledger.ledger_api import LedgerApi
from tests.ledger.rows import ledger_rows

# "rollback" (the plugin's isolation) or "recreate" (a fresh schema per test).
ISOLATION = os.environ.get("TEST_LEDGER_ISOLATION", "rollback")


@dataclass(frozen=True)
class Backend:
    name: str
    url: str | None  # None: a new SQLite file per test


# Session scope: pytest groups the tests by backend, so each backend's app starts once.
@pytest.fixture(scope="session", params=BACKENDS)
def ledger_backend(request: pytest.FixtureRequest) -> Backend:
    name: str = request.param
    if name == "sqlite":
        return Backend(name, None)
    return Backend(name, prepare_server(name, "ledger_test"))


# The rollback-isolated tests: the plugin's fixtures, one app per backend per session.


@pytest.fixture(scope="session")
def ledger_isolated_url(ledger_backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The database the isolated tests share for the session, beside the fresh ones."""
    if ledger_backend.url is None:
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
    return prepare_server(ledger_backend.name, "ledger_isolated")


@pytest.fixture(scope="session")
def asyncdb_app(ledger_isolated_url: str) -> FastAPI:
    """Overrides the plugin's: the ledger on this backend, migrating at startup."""
    return create_app(Database(url=ledger_isolated_url), migrate_on_startup=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def asyncdb_url(ledger_isolated_url: str) -> AsyncIterator[URL]:
    """Overrides the plugin's (one URL per session) with this backend's database.

    Its teardown runs after the app's lifespan ended: every isolated test is done, and
    none may have left a row behind.
    """
    yield make_url(ledger_isolated_url)
    leaked = await ledger_rows(ledger_isolated_url)
    assert not any(leaked.values()), f"rows survived the rollback isolation: {leaked}"


@pytest_asyncio.fixture(loop_scope="session")
async def session_loop() -> asyncio.AbstractEventLoop:
    """The loop the plugin's Database lives on, for synchronous tests (Hypothesis) that
    wait on it with ``run_until_complete``."""
    return asyncio.get_running_loop()


# The tests' own fixtures on a freshly migrated schema, for what isolation cannot give.


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
async def fresh_app(database: Database) -> AsyncIterator[FastAPI]:
    app = create_app(database, migrate_on_startup=True)
    # ASGITransport does not run the lifespan; the real one migrates and starts the pools.
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def fresh_api(fresh_app: FastAPI) -> AsyncIterator[LedgerApi]:
    """The app on a schema of its own, migrated for this test: transactions really race."""
    transport = httpx.ASGITransport(app=fresh_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as client:
        yield LedgerApi(client)


@pytest.fixture
def blocking_ledger(database: Database) -> Iterator[BlockingLedger]:
    """The app started on a loop of its own, for synchronous Hypothesis tests."""
    with BlockingLedger(database) as ledger:
        yield ledger


if ISOLATION == "recreate":
    # Today's way before the plugin, kept for tests/ledger/measure.py to compare against.

    @pytest.fixture
    def api(fresh_api: LedgerApi) -> LedgerApi:
        return fresh_api

    @pytest.fixture
    def db(database: Database, fresh_app: FastAPI) -> Database:
        return database

elif ISOLATION == "rollback":

    @pytest.fixture
    def api(client: httpx.AsyncClient) -> LedgerApi:
        """The ledger through the plugin's ``client``: this test isolated by a rollback."""
        return LedgerApi(client)

else:
    raise pytest.UsageError(f"TEST_LEDGER_ISOLATION={ISOLATION!r}: rollback or recreate")
