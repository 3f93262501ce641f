"""Every contract test runs on SQLite, PostgreSQL and MariaDB, each on a freshly migrated schema.

Server URLs can be overridden with LEDGER_TEST_POSTGRES_URL and LEDGER_TEST_MARIADB_URL;
their database (``ledger_test`` by default) is dropped and created at session start.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_asyncdb import Database
from ledger.app import create_app
from tests.ledger.ledger_api import LedgerApi

SERVER_URLS = {
    "postgresql": os.environ.get(
        "LEDGER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/ledger_test"
    ),
    "mariadb": os.environ.get(
        "LEDGER_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/ledger_test"
    ),
}
# Where to connect to drop and create the test database (never the one dropped).
ADMIN_DATABASE = "test"
CONNECT_TIMEOUT = 3


@dataclass(frozen=True)
class Backend:
    name: str
    url: str | None  # None: a new SQLite file per test


@pytest_asyncio.fixture(
    scope="session", loop_scope="session", params=["sqlite", "postgresql", "mariadb"]
)
async def ledger_backend(request: pytest.FixtureRequest) -> Backend:
    name: str = request.param
    if name == "sqlite":
        return Backend(name, None)
    url = SERVER_URLS[name]
    try:
        await _recreate_database(url)
    except (OSError, TimeoutError, DBAPIError) as error:
        reason = f"{name} is unreachable at {make_url(url)!r}: {type(error).__name__}: {error}"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so {reason}", pytrace=False)
        pytest.skip(reason)
    return Backend(name, url)


async def _recreate_database(url: str) -> None:
    target = make_url(url)
    assert target.database, f"{url!r} names no database"
    is_postgresql = target.get_backend_name() == "postgresql"
    admin = create_async_engine(
        target.set(database=ADMIN_DATABASE),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout" if is_postgresql else "connect_timeout": CONNECT_TIMEOUT},
    )
    name = admin.dialect.identifier_preparer.quote(target.database)
    # FORCE: a connection left over from an interrupted run must not block the fresh start.
    force = " WITH (FORCE)" if is_postgresql else ""
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
            await connection.execute(text(f"CREATE DATABASE {name}"))
    finally:
        await admin.dispose()


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
