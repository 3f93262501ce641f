"""Fixtures for real PgBouncer, TLS PostgreSQL and TLS MariaDB servers.

Use them from any test module by registering this module in the root conftest
(``pytest_plugins = ["tests.servers.plugin"]``); ``tests/servers`` imports them itself.

- ``start_pgbouncer(**settings)``: a function-scoped factory, PgBouncer in front of the
  suite's PostgreSQL (``PgBouncerConfig`` names the settings); ``pgbouncer_transaction``
  and ``pgbouncer_session`` are one each with the defaults.
- ``postgresql_tls`` / ``postgresql_plaintext``: private clusters for the session.
- ``mariadb_tls`` / ``mariadb_plaintext``: private MariaDB servers for the session.
- ``pgbouncer_database``: this run's database on the suite's PostgreSQL.

Servers start on first request, are stopped when their scope ends, and the run's
directory is removed with the last of them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import prepare_server

from .mariadb import MariaDBServer
from .pgbouncer import PgBouncer, PgBouncerConfig
from .postgresql import PostgresCluster
from .processes import run_directory

__all__ = [
    "STARTUPS",
    "Startup",
    "mariadb_plaintext",
    "mariadb_tls",
    "pgbouncer_database",
    "pgbouncer_session",
    "pgbouncer_transaction",
    "postgresql_plaintext",
    "postgresql_tls",
    "servers_run",
    "start_pgbouncer",
]

StartPgBouncer = Callable[..., PgBouncer]


@dataclass(frozen=True)
class Startup:
    """How long a server took from nothing to accepting connections, set up."""

    server: str
    seconds: float


STARTUPS: list[Startup] = []
_names: dict[str, int] = {}


def _unique(kind: str) -> str:
    _names[kind] = _names.get(kind, 0) + 1
    return f"{kind}-{_names[kind]}"


@pytest.fixture(scope="session")
def servers_run() -> Iterator[None]:
    """Owns the run directory: removed after every server fixture has stopped its server."""
    directory = run_directory()
    yield
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pgbouncer_database() -> str:
    """The name of this run's database on the suite's PostgreSQL, for use through PgBouncer."""
    return str(make_url(prepare_server("postgresql", "servers")).database)


@pytest.fixture
def start_pgbouncer(servers_run: None) -> Iterator[StartPgBouncer]:
    started: list[PgBouncer] = []
    known = {field.name for field in fields(PgBouncerConfig)}

    def start(**settings: object) -> PgBouncer:
        unknown = set(settings) - known
        if unknown:
            raise TypeError(f"not PgBouncer settings: {sorted(unknown)}")
        bouncer = PgBouncer(_unique("pgbouncer"), PgBouncerConfig(**settings))  # type: ignore[arg-type]
        started.append(bouncer)
        bouncer.start()
        STARTUPS.append(Startup("pgbouncer", bouncer.start_seconds))
        return bouncer

    yield start
    for bouncer in started:
        bouncer.remove()


@pytest.fixture
def pgbouncer_transaction(start_pgbouncer: StartPgBouncer, pgbouncer_database: str) -> PgBouncer:
    return start_pgbouncer(pool_mode="transaction")


@pytest.fixture
def pgbouncer_session(start_pgbouncer: StartPgBouncer, pgbouncer_database: str) -> PgBouncer:
    return start_pgbouncer(pool_mode="session")


def _cluster(tls: bool) -> Iterator[PostgresCluster]:
    started = time.monotonic()
    cluster = PostgresCluster(_unique("postgresql-tls" if tls else "postgresql"), tls=tls)
    try:
        cluster.create()
        cluster.start()
        if tls:
            cluster.setup_roles()
        STARTUPS.append(Startup(cluster.process.name, time.monotonic() - started))
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def postgresql_tls(servers_run: None) -> Iterator[PostgresCluster]:
    yield from _cluster(tls=True)


@pytest.fixture(scope="session")
def postgresql_plaintext(servers_run: None) -> Iterator[PostgresCluster]:
    yield from _cluster(tls=False)


def _mariadb(tls: bool) -> Iterator[MariaDBServer]:
    started = time.monotonic()
    server = MariaDBServer(_unique("mariadb-tls" if tls else "mariadb"), tls=tls)
    try:
        server.create()
        server.start()
        server.setup_users()
        STARTUPS.append(Startup(server.process.name, time.monotonic() - started))
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def mariadb_tls(servers_run: None) -> Iterator[MariaDBServer]:
    yield from _mariadb(tls=True)


@pytest.fixture(scope="session")
def mariadb_plaintext(servers_run: None) -> Iterator[MariaDBServer]:
    yield from _mariadb(tls=False)
