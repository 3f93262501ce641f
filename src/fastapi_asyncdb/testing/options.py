"""The plugin's options, and its hooks: the loop tests run on, the templates xdist leaves."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .databases import drop_database

__all__ = [
    "ISOLATION_FIXTURE",
    "TEMPLATE_OUTPUT",
    "Options",
    "mark_for_session_loop",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_fixture_setup",
    "pytest_pycollect_makeitem",
    "pytest_sessionfinish",
    "pytest_testnodedown",
]

URL_ENVIRONMENT_VARIABLE = "TEST_DATABASE_URL"
ISOLATION_FIXTURE = "asyncdb_isolation"
FAULTS_FIXTURE = "db_faults"
TEMPLATE_OUTPUT = "asyncdb_template"
_USES_FAULTS = pytest.StashKey[bool]()
_TEMPLATES = pytest.StashKey[set[str]]()
# Where pytest-asyncio keeps the loop scope a fixture function chose.
_LOOP_SCOPE = "_loop_scope"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("asyncdb", "fastapi-asyncdb: tests on a real database")
    group.addoption(
        "--asyncdb-app",
        help="the app under test, as package.module:attribute (ini: asyncdb_app)",
    )
    group.addoption(
        "--asyncdb-url",
        help="the server and base name of the test databases, an async SQLAlchemy URL "
        f"(env: {URL_ENVIRONMENT_VARIABLE}, ini: asyncdb_url; default: a SQLite file "
        "in pytest's temporary directory)",
    )
    group.addoption(
        "--asyncdb-schema",
        help="metadata:module:attribute or alembic:alembic.ini (ini: asyncdb_schema)",
    )
    parser.addini("asyncdb_app", "the app under test, as package.module:attribute")
    parser.addini("asyncdb_url", "the server and base name of the test databases")
    parser.addini("asyncdb_schema", "metadata:module:attribute or alembic:alembic.ini")


class Options:
    """The options as the fixtures read them: command line, then environment, then ini."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config

    def _value(self, name: str, environment: str | None = None) -> str | None:
        given = self._config.getoption(name)
        if not given and environment is not None:
            given = os.environ.get(environment)
        if not given:
            given = self._config.getini(name)
        return str(given) if given else None

    @property
    def app(self) -> str | None:
        return self._value("asyncdb_app")

    @property
    def url(self) -> URL | None:
        """The base URL, as an object: its repr (in a traceback) masks the password."""
        given = self._value("asyncdb_url", URL_ENVIRONMENT_VARIABLE)
        if given is None:
            return None
        try:
            return make_url(given)
        except (ArgumentError, ValueError):
            raise pytest.UsageError(
                f"{URL_ENVIRONMENT_VARIABLE} (--asyncdb-url, asyncdb_url) is not a valid "
                "SQLAlchemy URL; a password holding '@', ':' or '/' must be percent-encoded"
            ) from None

    @property
    def schema(self) -> str | None:
        return self._value("asyncdb_schema")

    @property
    def base_directory(self) -> Path:
        """Where relative paths in the options start: the configuration file's directory."""
        inipath = self._config.inipath
        return inipath.parent if inipath is not None else self._config.rootpath

    @property
    def uses_faults(self) -> bool:
        return self._config.stash.get(_USES_FAULTS, False)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Iterator[None]:
    # Inside pytest-asyncio's own wrapper (trylast), so that it sees the marker.
    result = yield
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, pytest.Function):
            mark_for_session_loop(item)
    return result


def mark_for_session_loop(item: pytest.Function) -> None:
    """Run an async test that uses the database on the loop the database lives on.

    The Database is started once, on pytest-asyncio's session loop; a test on another
    loop could not use its connections. A loop scope the test chose itself is kept.
    """
    if ISOLATION_FIXTURE not in item.fixturenames:
        return
    if not _is_async(item.obj):
        return
    marker = item.get_closest_marker("asyncio")
    if marker is not None and (marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")):
        return
    item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    """An async fixture of a test that uses the database runs on the database's loop too.

    Unless it chose a loop itself: pytest-asyncio reads the loop a fixture chose from
    the function's ``_loop_scope`` (set by ``@pytest_asyncio.fixture(loop_scope=...)``);
    it is set here for the length of this setup only, so the same fixture used by a
    test without the database keeps its usual loop.
    """
    function = fixturedef.func
    chosen = getattr(function, _LOOP_SCOPE, None)
    if (
        chosen is not None
        or not _is_async(function)
        or ISOLATION_FIXTURE not in request.fixturenames
        or request.config.getini("asyncio_default_fixture_loop_scope") == "session"
    ):
        return (yield)
    setattr(function, _LOOP_SCOPE, "session")
    try:
        return (yield)
    finally:
        delattr(function, _LOOP_SCOPE)


def _is_async(function: object) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The Database goes through the fault forwarder only in runs that need it.
    config.stash[_USES_FAULTS] = any(
        FAULTS_FIXTURE in getattr(item, "fixturenames", ()) for item in items
    )


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """An xdist worker is done: note the template database it used, if any."""
    # The template's name only: the controller knows the server, and the password.
    template = getattr(node, "workeroutput", {}).get(TEMPLATE_OUTPUT)
    if template:
        node.config.stash.setdefault(_TEMPLATES, set()).add(template)


def pytest_sessionfinish(session: pytest.Session) -> None:
    templates = session.config.stash.get(_TEMPLATES, set())
    base_url = Options(session.config).url
    if templates and base_url is not None:
        asyncio.run(_drop_all(sorted(templates), base_url))


async def _drop_all(names: list[str], base_url: URL) -> None:
    for name in names:
        await drop_database(base_url.set(database=name), base_url)
