"""Real databases for the tests: SQLite always, PostgreSQL and MariaDB when reachable.

In CI (``CI`` set) an unreachable server fails the run; elsewhere its tests are
skipped and the summary says which databases were left out.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

SERVER_URLS = {
    "postgresql": os.environ.get(
        "TEST_POSTGRESQL_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/asyncdb_test"
    ),
    "mysql": os.environ.get("TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/asyncdb_test"),
}
BACKENDS = ("sqlite", "postgresql", "mysql")
# Where to connect to drop and create a test database (never the one dropped).
ADMIN_DATABASE = "test"
_unreachable: dict[str, str] = {}
_prepared: set[str] = set()


async def _recreate_database(url: str) -> None:
    target = make_url(url)
    is_postgresql = target.get_backend_name() == "postgresql"
    admin = create_async_engine(
        target.set(database=ADMIN_DATABASE),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout" if is_postgresql else "connect_timeout": 3},
    )
    name = admin.dialect.identifier_preparer.quote(str(target.database))
    # FORCE: a connection left over from an interrupted run must not block the fresh start.
    force = " WITH (FORCE)" if is_postgresql else ""
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
            await connection.execute(text(f"CREATE DATABASE {name}"))
    finally:
        await admin.dispose()


def prepare_server(backend: str, database: str = "asyncdb_test") -> str:
    """Recreate a test database once per run; skip, or in CI fail, if the server is down."""
    url = make_url(SERVER_URLS[backend]).set(database=database).render_as_string(False)
    key = f"{backend}/{database}"
    if key not in _prepared and backend not in _unreachable:
        try:
            asyncio.run(_recreate_database(url))
            _prepared.add(key)
        except (OSError, TimeoutError, DBAPIError) as error:
            _unreachable[backend] = f"{type(error).__name__}: {error}"
    if backend in _unreachable:
        message = f"{backend} unreachable at {make_url(url).host} ({_unreachable[backend]})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI requires every database", pytrace=False)
        pytest.skip(f"{message}; set CI=1 to make this a failure")
    return url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    return prepare_server(backend)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment; tests start from none of ours."""
    for name in list(os.environ):
        if name == "DATABASE_URL" or name.startswith("DB_"):
            monkeypatch.delenv(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests marked for some backends only are not collected for the others at all.
    items[:] = [item for item in items if _runs_on_its_backend(item)]


def _runs_on_its_backend(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("backends")
    callspec = getattr(item, "callspec", None)
    chosen = callspec.params.get("backend") if callspec is not None else None
    return marker is None or chosen is None or chosen in marker.args


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unreachable:
        terminalreporter.write_line(
            "databases skipped (unreachable): " + ", ".join(sorted(_unreachable)), yellow=True
        )
    else:
        tested = ", ".join(["sqlite", *sorted({key.split("/")[0] for key in _prepared})])
        terminalreporter.write_line(f"databases tested: {tested}")
