"""Real databases for the tests: SQLite always, PostgreSQL and MariaDB when reachable.

In CI (``CI`` set) an unreachable server fails the run; elsewhere its tests are
skipped and the summary says which databases were left out.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

SERVER_URLS = {
    "postgresql": os.environ.get(
        "TEST_POSTGRESQL_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/asyncdb_test"
    ),
    "mysql": os.environ.get("TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/asyncdb_test"),
}
BACKENDS = ("sqlite", "postgresql", "mysql")
_unreachable: dict[str, str] = {}
_prepared: set[str] = set()


async def _recreate_postgresql(url: str) -> None:
    import asyncpg

    target = make_url(url)
    admin = await asyncpg.connect(
        host=target.host, port=target.port, user=target.username, database="postgres", timeout=3
    )
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{target.database}"')
    finally:
        await admin.close()


async def _recreate_mysql(url: str) -> None:
    import asyncmy

    target = make_url(url)
    admin = await asyncmy.connect(
        host=target.host,
        port=target.port or 3306,
        user=target.username or "root",
        password=target.password or "",
        connect_timeout=3,
    )
    try:
        async with admin.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{target.database}`")
            await cursor.execute(f"CREATE DATABASE `{target.database}`")
    finally:
        admin.close()


def prepare_server(backend: str) -> str:
    """Create the backend's test database once per run; skip or fail if it is unreachable."""
    url = SERVER_URLS[backend]
    if backend not in _prepared and backend not in _unreachable:
        recreate = _recreate_postgresql if backend == "postgresql" else _recreate_mysql
        try:
            asyncio.run(recreate(url))
            _prepared.add(backend)
        except (OSError, TimeoutError, ConnectionError) as error:
            _unreachable[backend] = f"{type(error).__name__}: {error}"
    if backend in _unreachable:
        message = f"{backend} unreachable at {make_url(url).host} ({_unreachable[backend]})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI requires every database")
        pytest.skip(f"{message}; set CI=1 to make this a failure")
    return url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    allowed = request.node.get_closest_marker("backends")
    if allowed is not None and request.param not in allowed.args:
        pytest.skip(f"not applicable to {request.param}")
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
    # Tests marked for some backends only are not generated for the others at all.
    for item in list(items):
        marker = item.get_closest_marker("backends")
        callspec = getattr(item, "callspec", None)
        if marker is not None and callspec is not None:
            chosen = callspec.params.get("backend")
            if chosen is not None and chosen not in marker.args:
                items.remove(item)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unreachable:
        terminalreporter.write_line(
            "databases skipped (unreachable): " + ", ".join(sorted(_unreachable)), yellow=True
        )
    else:
        tested = ", ".join(["sqlite", *sorted(_prepared)])
        terminalreporter.write_line(f"databases tested: {tested}")
