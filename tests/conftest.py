"""Real databases for the tests: SQLite always, PostgreSQL and MariaDB when reachable.

In CI (``CI`` set) an unreachable server fails the run; elsewhere its tests are
skipped and the summary says which databases were left out.

Each run (each xdist worker) creates its databases under names of its own, ending in
a tag of its machine and its process id, and drops them at the end; so two runs against
one server never drop each other's database. Databases left by a run of this machine
that was killed are dropped by its next run once their process is gone; no other
database is touched.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

# Servers the tests start themselves: PgBouncer, PostgreSQL and MariaDB with TLS.
pytest_plugins = ["tests.servers.plugin"]

# The tests check behaviour, not speed: one example slower than Hypothesis' deadline
# (200 ms), or slow data generation, on a machine busy with the other workers is no
# failure. A test's own @settings still sets the rest.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

SERVER_URLS = {
    "postgresql": os.environ.get(
        "TEST_POSTGRESQL_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"),
}
# Every database this run creates is named <base>_fadb<host>_<pid>: the host's tag keeps
# the clean-up below (a process id is alive or not on this machine only) to databases
# this machine's runs made, and the prefix to this suite's; no other database matches.
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_RUN_SUFFIX = f"_fadb{_HOST_TAG}_{os.getpid()}"
_RUN_NAME = re.compile(rf"^[a-z_]+_fadb{_HOST_TAG}_(\d+)$")
BACKENDS = ("sqlite", "postgresql", "mysql")
# Where to connect to drop and create a test database (never the one dropped).
ADMIN_DATABASE = "test"
_unreachable: dict[str, str] = {}
_prepared: dict[str, str] = {}


def _admin_engine(url: str) -> AsyncEngine:
    target = make_url(url)
    is_postgresql = target.get_backend_name() == "postgresql"
    return create_async_engine(
        target.set(database=ADMIN_DATABASE),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout" if is_postgresql else "connect_timeout": 3},
    )


async def _drop(connection: AsyncConnection, name: str) -> None:
    quoted = connection.dialect.identifier_preparer.quote(name)
    # FORCE: a connection left over from an interrupted run must not block the drop.
    force = " WITH (FORCE)" if connection.dialect.name == "postgresql" else ""
    await connection.execute(text(f"DROP DATABASE IF EXISTS {quoted}{force}"))


async def _database_names(connection: AsyncConnection) -> list[str]:
    if connection.dialect.name == "postgresql":
        query = "SELECT datname FROM pg_database"
    else:
        query = "SELECT schema_name FROM information_schema.schemata"
    return list((await connection.execute(text(query))).scalars())


async def _recreate_database(url: str) -> None:
    admin = _admin_engine(url)
    try:
        async with admin.connect() as connection:
            for name in await _database_names(connection):
                match = _RUN_NAME.match(name)
                if match and not _process_alive(int(match.group(1))):
                    await _drop(connection, name)  # left behind by a run that was killed
            name = str(make_url(url).database)
            await _drop(connection, name)
            quoted = connection.dialect.identifier_preparer.quote(name)
            await connection.execute(text(f"CREATE DATABASE {quoted}"))
    finally:
        await admin.dispose()


async def _drop_databases(urls: list[str]) -> None:
    for url in urls:
        admin = _admin_engine(url)
        try:
            async with admin.connect() as connection:
                await _drop(connection, str(make_url(url).database))
        finally:
            await admin.dispose()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_server(backend: str, database: str = "asyncdb_test") -> str:
    """Create this run's test database once; skip, or in CI fail, if the server is down.

    ``database`` is a base name; the run's own suffix is appended.
    """
    database = f"{database}{_RUN_SUFFIX}"
    url = make_url(SERVER_URLS[backend]).set(database=database).render_as_string(False)
    key = f"{backend}/{database}"
    if key not in _prepared and backend not in _unreachable:
        try:
            asyncio.run(_recreate_database(url))
            _prepared[key] = url
        except (OSError, TimeoutError, DBAPIError) as error:
            _unreachable[backend] = f"{type(error).__name__}: {error}"
    if backend in _unreachable:
        message = f"{backend} unreachable at {make_url(url).host} ({_unreachable[backend]})"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI requires every database", pytrace=False)
        pytest.skip(f"{message}; set CI=1 to make this a failure")
    return url


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test: parametrized by ``pytest_generate_tests``."""
    return str(request.param)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test marked for some backends is made for those only: nothing is collected
    # to be removed again, so every collected test runs, under xdist too (whose
    # summary has no count of what its workers deselect).
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    if _parametrizes_backend(metafunc):
        if marker is not None:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: choose its backends with "
                "@pytest.mark.backends or with its own parametrize of 'backend', not both"
            )
        return
    if marker is not None and not all(isinstance(name, str) for name in marker.args):
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: name backends one by one: "
            "@pytest.mark.backends('postgresql', 'mysql')"
        )
    names = BACKENDS if marker is None else tuple(n for n in BACKENDS if n in marker.args)
    unknown = set(marker.args if marker is not None else ()) - set(BACKENDS)
    if unknown or not names:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: @pytest.mark.backends names none of {BACKENDS}"
            if not names
            else f"{metafunc.definition.nodeid}: unknown backends {sorted(unknown)}"
        )
    metafunc.parametrize("backend", names, indirect=True)


def _parametrizes_backend(metafunc: pytest.Metafunc) -> bool:
    """Whether the test chooses its backends itself, with its own parametrize."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return True
    return False


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    return prepare_server(backend)


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment; tests start from none of ours."""
    for name in list(os.environ):
        if name in ("DATABASE_URL", "WEB_CONCURRENCY") or name.startswith("DB_"):
            monkeypatch.delenv(name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _prepared:
        asyncio.run(_drop_databases(list(_prepared.values())))
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller writes the summary
        workeroutput["databases_tested"] = sorted({key.split("/")[0] for key in _prepared})
        workeroutput["databases_unreachable"] = dict(_unreachable)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """An xdist worker ended: what it tested goes into the controller's summary."""
    output = getattr(node, "workeroutput", {})
    _tested_by_workers.update(output.get("databases_tested", ()))
    _unreachable.update(output.get("databases_unreachable", {}))


_tested_by_workers: set[str] = set()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _unreachable:
        terminalreporter.write_line(
            "databases skipped (unreachable): " + ", ".join(sorted(_unreachable)), yellow=True
        )
    else:
        servers = {key.split("/")[0] for key in _prepared} | _tested_by_workers
        tested = ", ".join(["sqlite", *sorted(servers)])
        terminalreporter.write_line(f"databases tested: {tested}")
