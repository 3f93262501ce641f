"""The registry: which backend class serves a URL, by backend name and driver.

A second driver of a database already served (psycopg 3 beside asyncpg) is a module
of its own; here a subclass defined in the test stands for it. psycopg is not
installed, which is what a user without the extra sees.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy.dialects.mysql.asyncmy import MySQLDialect_asyncmy
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.postgresql.psycopg import PGDialectAsync_psycopg
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import Dialect

from fastapi_asyncdb import Database
from fastapi_asyncdb.backends import Backend, _backend_classes, backend_class_for_dialect
from fastapi_asyncdb.backends.mysql import MySQL
from fastapi_asyncdb.backends.postgresql import PostgreSQL
from fastapi_asyncdb.backends.sqlite import SQLite
from fastapi_asyncdb.errors import ConfigurationError

pytestmark = [pytest.mark.usefixtures("clean_environment")]


@contextmanager
def _registered(driver_name: str, extra_name: str) -> Iterator[type[PostgreSQL]]:
    """A PostgreSQL backend for another driver, registered only inside the block.

    The registry is cached and finds backends among ``Backend``'s subclasses: the cache
    is cleared on the way in and on the way out. A class stays a subclass until it is
    collected, which pytest delays (a fixture's value, a failure's traceback hold it);
    on the way out it serves no backend name any more, so no later registry finds it.
    """

    class SecondDriver(PostgreSQL):
        driver = driver_name
        extra = extra_name

    _backend_classes.cache_clear()
    try:
        yield SecondDriver
    finally:
        SecondDriver.dialects = ()
        _backend_classes.cache_clear()


@pytest.fixture
def psycopg_backend() -> Iterator[type[PostgreSQL]]:
    with _registered("psycopg", "psycopg") as cls:
        yield cls


def _dialect(dialect_class: Any) -> Dialect:
    # SQLAlchemy's dialect classes are untyped; making one needs no driver package.
    dialect: Dialect = dialect_class()
    return dialect


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+asyncpg://u@h/db", PostgreSQL),
        ("mysql+asyncmy://u@h/db", MySQL),
        ("mariadb+asyncmy://u@h/db", MySQL),
        ("sqlite", SQLite),
    ],
)
def test_each_async_url_resolves_to_its_backend(
    url: str, expected: type[Backend], tmp_path: Path
) -> None:
    url = _sqlite_url(tmp_path) if url == "sqlite" else url
    assert type(Database(url=url).backend) is expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://u@h/db",
            "uses the driver 'psycopg2', which is not asyncio-compatible; "
            "write postgresql+asyncpg:// instead",
        ),
        (
            "postgresql+psycopg://u@h/db",
            "uses the driver 'psycopg', which fastapi-asyncdb does not support; "
            "write postgresql+asyncpg:// instead",
        ),
        (
            "mysql+aiomysql://u@h/db",
            "uses the driver 'aiomysql', which fastapi-asyncdb does not support; "
            "write mysql+asyncmy:// instead",
        ),
        (
            "postgresql+ASYNCPG://u@h/db",
            "uses the driver 'ASYNCPG', written in capitals, which SQLAlchemy does not read; "
            "write postgresql+asyncpg:// instead",
        ),
        ("postgres://u@h/db", "names the backend 'postgres'; write postgresql+asyncpg:// instead"),
        (
            "POSTGRESQL+ASYNCPG://u@h/db",
            "names the backend 'POSTGRESQL'; write postgresql+asyncpg:// instead",
        ),
        ("MySQL+asyncmy://u@h/db", "names the backend 'MySQL'; write mysql+asyncmy:// instead"),
        (
            "mariadb://u@h/db",
            "uses the driver 'mysqldb', which is not asyncio-compatible; "
            "write mariadb+asyncmy:// instead",
        ),
        (
            "sqlite:///app.db",
            "uses the driver 'pysqlite', which is not asyncio-compatible; "
            "write sqlite+aiosqlite:// instead",
        ),
        (
            "oracle+oracledb://u@h/db",
            "backend 'oracle' is not supported; use one of "
            "mysql+asyncmy://, postgresql+asyncpg://, sqlite+aiosqlite://",
        ),
    ],
)
def test_a_url_no_backend_serves_is_refused_naming_what_to_write(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Database(url=url)
    assert str(caught.value) == f"Invalid database settings:\n  DATABASE_URL (url): {message}"


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (_dialect(PGDialect_asyncpg), PostgreSQL),
        (_dialect(MySQLDialect_asyncmy), MySQL),
        (_dialect(SQLiteDialect_aiosqlite), SQLite),
        (_dialect(PGDialect_psycopg2), None),
        (_dialect(PGDialectAsync_psycopg), None),
    ],
)
def test_a_dialect_maps_to_the_backend_of_its_name_and_driver(
    dialect: Dialect, expected: type[Backend] | None
) -> None:
    assert backend_class_for_dialect(dialect) is expected


def test_a_second_driver_of_a_backend_name_is_picked_for_its_urls(
    psycopg_backend: type[PostgreSQL],
) -> None:
    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg is installed: its absence is what this test needs")
    with pytest.raises(ConfigurationError) as caught:
        Database(url="postgresql+psycopg://u@h/db")
    assert str(caught.value).endswith(
        "needs the driver package 'psycopg', which is not installed; "
        "install it with: pip install 'fastapi-asyncdb[psycopg]'"
    )
    assert backend_class_for_dialect(_dialect(PGDialectAsync_psycopg)) is psycopg_backend


def test_a_second_driver_leaves_the_first_drivers_urls_to_it(
    psycopg_backend: type[PostgreSQL],
) -> None:
    assert type(Database(url="postgresql+asyncpg://u@h/db").backend) is PostgreSQL
    assert backend_class_for_dialect(_dialect(PGDialect_asyncpg)) is PostgreSQL


def test_a_second_driver_installed_is_the_backend_of_its_urls(
    psycopg_backend: type[PostgreSQL], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def with_psycopg(name: str, package: str | None = None) -> object:
        # The registry asks only whether the package is there; nothing imports it here.
        return real_find_spec("asyncpg") if name == "psycopg" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", with_psycopg)
    assert type(Database(url="postgresql+psycopg://u@h/db").backend) is psycopg_backend
    assert type(Database(url="postgresql+asyncpg://u@h/db").backend) is PostgreSQL


def test_a_sync_url_names_every_async_driver_of_its_backend(
    psycopg_backend: type[PostgreSQL],
) -> None:
    for url in ("postgresql://u@h/db", "postgresql+psycopg2://u@h/db"):
        with pytest.raises(ConfigurationError) as caught:
            Database(url=url)
        assert str(caught.value).endswith(
            "uses the driver 'psycopg2', which is not asyncio-compatible; "
            "write postgresql+asyncpg:// or postgresql+psycopg:// instead"
        )


def test_an_unsupported_backend_lists_every_driver_served(
    psycopg_backend: type[PostgreSQL],
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Database(url="oracle+oracledb://u@h/db")
    assert str(caught.value).endswith(
        "use one of mysql+asyncmy://, postgresql+asyncpg://, postgresql+psycopg://, "
        "sqlite+aiosqlite://"
    )


def test_a_backend_defined_in_a_test_is_gone_after_it() -> None:
    with _registered("psycopg", "psycopg") as cls:
        assert ("postgresql", "psycopg") in _backend_classes()
    assert cls in PostgreSQL.__subclasses__()  # still alive, and yet no backend
    assert ("postgresql", "psycopg") not in _backend_classes()
    assert set(_backend_classes()) == {
        ("postgresql", "asyncpg"),
        ("mysql", "asyncmy"),
        ("mariadb", "asyncmy"),
        ("sqlite", "aiosqlite"),
    }


def test_two_backends_for_one_name_and_driver_are_refused_naming_both() -> None:
    with (
        _registered("asyncpg", "postgresql"),
        pytest.raises(TypeError) as caught,
    ):
        _backend_classes()
    assert str(caught.value) == (
        "fastapi_asyncdb.backends.postgresql.PostgreSQL and "
        f"{__name__}._registered.<locals>.SecondDriver both serve postgresql+asyncpg://; "
        "one backend per database and driver"
    )


def test_a_subclass_that_declares_nothing_it_serves_is_not_a_backend() -> None:
    class Tuned(PostgreSQL):
        fast_path = False

    _backend_classes.cache_clear()
    try:
        assert Tuned in PostgreSQL.__subclasses__()
        assert _backend_classes()[("postgresql", "asyncpg")] is PostgreSQL
    finally:
        _backend_classes.cache_clear()


def test_tls_parameters_of_a_backend_without_tls_names_are_refused_not_passed_on() -> None:
    # A backend added as one module, its URL's TLS parameter names left out of tls.py:
    # its URLs work, but a TLS parameter in one is refused, never handed unread to a
    # driver that may fall back to plaintext.
    class Cockroach(PostgreSQL):
        dialects: ClassVar[tuple[str, ...]] = ("cockroachdb",)
        driver = "asyncpg"

    _backend_classes.cache_clear()
    try:
        assert type(Database(url="cockroachdb+asyncpg://app@db.example/app").backend) is Cockroach
        with pytest.raises(ConfigurationError) as refused:
            Database(url="cockroachdb+asyncpg://app@db.example/app?sslmode=verify-full")
        assert "sslmode is not one fastapi-asyncdb reads in a cockroachdb URL" in str(refused.value)
    finally:
        Cockroach.dialects = ()
        _backend_classes.cache_clear()
