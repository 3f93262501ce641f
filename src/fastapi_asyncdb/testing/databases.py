"""The database a test run works in: one per process (per xdist worker), made and dropped here.

The URL a user gives names a server and a base name; the plugin never writes to the
database it names. Each process works in ``<base>_<worker>_t<pid>`` beside it (on
SQLite, a file named so beside the given one, or in pytest's temporary directory when
no URL is given), created at the start of the session and dropped at its end, so that
runs and workers sharing a server never meet.

URLs travel as SQLAlchemy ``URL`` objects, never as strings: a traceback (``--tb=long``,
``--showlocals``) prints arguments and locals by their repr, which masks the password.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "check_reachable",
    "clone_template",
    "create_database",
    "drop_database",
    "is_server",
    "secret_url",
    "template_url",
    "worker_name",
    "worker_url",
]

Build = Callable[[URL], Awaitable[None]]
"""Applies the schema to the (empty) database of the URL it is given."""


def worker_name() -> str:
    """``gw0``, ``gw1``... under pytest-xdist; ``main`` otherwise."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def is_server(url: URL) -> bool:
    return url.get_backend_name() != "sqlite"


def secret_url(url: URL) -> SecretStr:
    """``url`` for the settings (``db.configure(url=...)``), its password still masked
    in reprs."""
    return SecretStr(url.render_as_string(hide_password=False))


def worker_url(base_url: URL | None, temporary_directory: Path) -> URL:
    """The URL of this process's own database, derived from ``base_url``."""
    suffix = f"{worker_name()}_t{os.getpid()}"
    if base_url is None:
        path = temporary_directory / f"asyncdb_{suffix}.sqlite"
        return make_url(f"sqlite+aiosqlite:///{path}")
    url = base_url
    if not url.database:
        raise ValueError("the test database URL names no database")
    if url.get_backend_name() == "sqlite":
        path = Path(url.database)
        return url.set(database=str(path.with_name(f"{path.stem}_{suffix}{path.suffix}")))
    return url.set(database=f"{url.database}_{suffix}")


async def create_database(url: URL, base_url: URL | None) -> None:
    """Create the database of ``url`` afresh, connecting to ``base_url``'s to do it."""
    if not is_server(url):
        _remove_sqlite_files(url)
        return
    assert base_url is not None
    async with _admin(base_url) as connection:
        await _drop(connection, url)
        name = _quoted(connection, str(url.database))
        await connection.execute(text(f"CREATE DATABASE {name}"))


def template_url(base_url: URL | None) -> URL | None:
    """Under pytest-xdist on PostgreSQL: the database built once per run for the workers
    to copy (``CREATE DATABASE ... TEMPLATE``); None elsewhere."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if base_url is None or run is None:
        return None
    if base_url.get_backend_name() != "postgresql":
        return None
    return base_url.set(database=f"{base_url.database}_template_{run[:12]}")


async def clone_template(url: URL, base_url: URL, template: URL, build: Build) -> None:
    """Create the database of ``url`` as a copy of ``template``, built first if need be.

    The first worker builds the template; the others wait for it on an advisory lock.
    A template that failed to build is dropped, so the next worker tries again.
    """
    template_name = str(template.database)
    async with _admin(base_url) as connection:
        lock = {"name": template_name}
        await connection.execute(text("SELECT pg_advisory_lock(hashtext(:name))"), lock)
        try:
            exists = await connection.scalar(
                text("SELECT count(*) FROM pg_database WHERE datname = :name"), lock
            )
            if not exists:
                await connection.execute(
                    text(f"CREATE DATABASE {_quoted(connection, template_name)}")
                )
                try:
                    await build(template)
                except BaseException:
                    await _drop(connection, template)
                    raise
            await _drop(connection, url)
            name = _quoted(connection, str(url.database))
            source = _quoted(connection, template_name)
            await connection.execute(text(f"CREATE DATABASE {name} TEMPLATE {source}"))
        finally:
            await connection.execute(text("SELECT pg_advisory_unlock(hashtext(:name))"), lock)


async def check_reachable(base_url: URL) -> None:
    """Connect to the base database and leave; raises the driver's error if it cannot."""
    async with _admin(base_url):
        pass


async def drop_database(url: URL, base_url: URL | None) -> None:
    if not is_server(url):
        _remove_sqlite_files(url)
        return
    assert base_url is not None
    async with _admin(base_url) as connection:
        await _drop(connection, url)


@asynccontextmanager
async def _admin(base_url: URL) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection to the base database, for CREATE and DROP DATABASE."""
    engine = create_async_engine(base_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


async def _drop(connection: AsyncConnection, url: URL) -> None:
    name = _quoted(connection, str(url.database))
    # FORCE: a connection a killed test left open must not keep the database alive.
    force = " WITH (FORCE)" if connection.dialect.name == "postgresql" else ""
    await connection.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))


def _quoted(connection: AsyncConnection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote(name)


def _remove_sqlite_files(url: URL) -> None:
    database = url.database
    assert database
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(database + suffix).unlink(missing_ok=True)
