"""The plugin's fixtures; ``plugin`` says what each gives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from starlette.types import ASGIApp

from .. import redaction
from ..backends.base import driver_error
from ..database import Database
from ..fastapi.dependencies import STATE_KEY
from .databases import (
    check_reachable,
    clone_template,
    create_database,
    drop_database,
    is_server,
    secret_url,
    template_url,
    worker_url,
)
from .faults import DatabaseFaults, client_port
from .forwarder import Forwarder
from .lifespan import Lifespan
from .options import TEMPLATE_OUTPUT, URL_ENVIRONMENT_VARIABLE, Options
from .schema import Schema, load_object, parse_schema

__all__ = [
    "RunningApp",
    "asyncdb_app",
    "asyncdb_database",
    "asyncdb_isolation",
    "asyncdb_running_app",
    "asyncdb_schema",
    "asyncdb_url",
    "client",
    "db",
    "db_faults",
    "session",
]

# How long the end of a test waits for units of work the app still has in progress
# (a task of its own, still writing) before it fails the test.
_SETTLE_TIMEOUT = 5.0


@dataclass(frozen=True)
class RunningApp:
    """The app with its lifespan entered, and the Database it started."""

    asgi: ASGIApp
    database: Database
    state: dict[str, Any]
    forwarder: Forwarder | None


@pytest.fixture(scope="session")
def asyncdb_app(pytestconfig: pytest.Config) -> Any:
    """The app under test: ``asyncdb_app`` / ``--asyncdb-app``; override to build it in code."""
    path = Options(pytestconfig).app
    if path is None:
        pytest.fail(
            "fastapi-asyncdb's fixtures need the app under test: set asyncdb_app = "
            '"package.module:app" in the pytest configuration (or --asyncdb-app), '
            "or define an asyncdb_app fixture that returns it",
            pytrace=False,
        )
    try:
        return load_object(path)
    except (ImportError, AttributeError, ValueError) as error:
        pytest.fail(f"asyncdb_app = {path!r} cannot be loaded: {error}", pytrace=False)


@pytest.fixture(scope="session")
def asyncdb_database(asyncdb_app: Any) -> Database:
    """The app's ``Database``, not started: the one ``install(app, db)`` put on the app."""
    database = getattr(getattr(asyncdb_app, "state", None), STATE_KEY, None)
    if not isinstance(database, Database):
        pytest.fail(
            "the app has no Database installed (install(app, db)); define an "
            "asyncdb_database fixture that returns it",
            pytrace=False,
        )
    return database


@pytest.fixture(scope="session")
def asyncdb_schema(pytestconfig: pytest.Config) -> Schema | None:
    """How to create the schema: ``asyncdb_schema``; override with an async function of the
    started Database."""
    options = Options(pytestconfig)
    spec = options.schema
    if spec is None:
        return None
    try:
        return parse_schema(spec, options.base_directory)
    except (ImportError, AttributeError, ValueError) as error:
        pytest.fail(f"asyncdb_schema = {spec!r}: {error}", pytrace=False)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def asyncdb_url(
    pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
    asyncdb_database: Database,
    asyncdb_schema: Schema | None,
) -> AsyncIterator[URL]:
    """This process's database, created with its schema for the session, then dropped.

    A SQLAlchemy ``URL``: its repr (in a traceback) masks the password;
    ``url.render_as_string(hide_password=False)`` gives it whole.
    """
    base_url = Options(pytestconfig).url
    url = worker_url(base_url, tmp_path_factory.getbasetemp())
    # Validated before anything connects: a wrong URL fails with the settings' advice.
    asyncdb_database.configure(url=secret_url(url))

    async def build(target: URL) -> None:
        asyncdb_database.configure(url=secret_url(target))
        if asyncdb_schema is not None:
            async with asyncdb_database:
                await asyncdb_schema(asyncdb_database)

    # Only an xdist worker has a controller to drop the template at the end; a pytest
    # run inside a worker (pytester) inherits the worker's environment but is not one.
    template = template_url(base_url) if hasattr(pytestconfig, "workerinput") else None
    if base_url is not None and is_server(base_url):
        await _reach(base_url)
    if template is not None and base_url is not None and asyncdb_schema is not None:
        await clone_template(url, base_url, template, build)
        # The controller drops the template once every worker is done with it.
        pytestconfig.workeroutput[TEMPLATE_OUTPUT] = template.database  # type: ignore[attr-defined]
    else:
        await create_database(url, base_url)
        try:
            await build(url)
        except BaseException:
            await drop_database(url, base_url)
            raise
    try:
        asyncdb_database.configure(url=secret_url(url))
        yield url
    finally:
        await drop_database(url, base_url)


async def _reach(base_url: URL) -> None:
    """A server that cannot be reached, or has no base database, fails the session's
    tests with one line rather than a driver's traceback."""
    try:
        await check_reachable(base_url)
    except (DBAPIError, OSError) as error:
        cause = driver_error(error)
        reason = (str(cause).strip().splitlines() or [""])[0]
        pytest.fail(
            f"the test database server is not usable: {type(cause).__name__}: {reason} "
            f"(at {redaction.mask_url(base_url)}, from {URL_ENVIRONMENT_VARIABLE} or "
            "--asyncdb-url); the database it names must exist and accept this user: the "
            "plugin creates its own databases beside it",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def _asyncdb_url(asyncdb_url: URL | str) -> URL:
    """``asyncdb_url`` as a ``URL``, whichever an override returns (a string was the
    contract before): what the plugin's fixtures take, so a traceback's locals show its
    masked repr, never the string."""
    if isinstance(asyncdb_url, URL):
        return asyncdb_url
    try:
        url: URL | None = make_url(asyncdb_url)
    except Exception:
        url = None
    if url is not None:
        return url
    # Outside the except block and without a traceback: no frame (nor SQLAlchemy's
    # message) repeats the string, which may hold a password.
    pytest.fail(
        "asyncdb_url: the override returned no valid SQLAlchemy URL (a URL or a string "
        "like postgresql+asyncpg://user@host/app)",
        pytrace=False,
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def asyncdb_running_app(
    pytestconfig: pytest.Config,
    asyncdb_app: Any,
    asyncdb_database: Database,
    _asyncdb_url: URL,
) -> AsyncIterator[RunningApp]:
    """The app's lifespan, entered once for the session on the test database.

    The lifespan usually starts the Database (``FastAPI(lifespan=db.lifespan)``, or a
    lifespan of the app's own that enters ``db.lifespan(app)``); if it does not, the
    Database is started here.
    """
    database = asyncdb_database
    async with contextlib.AsyncExitStack() as stack:
        forwarder = None
        url = _asyncdb_url
        if Options(pytestconfig).uses_faults and is_server(url):
            forwarder = Forwarder.for_url(url)
            await forwarder.start()
            stack.push_async_callback(forwarder.close)
            url = forwarder.url_through(url)
        database.configure(url=secret_url(url))
        lifespan = Lifespan(asyncdb_app)
        await lifespan.startup()
        stack.push_async_callback(lifespan.shutdown)
        if not database.is_started:
            await database.start()
            stack.push_async_callback(database.stop)
        yield RunningApp(lifespan.asgi, database, lifespan.state, forwarder)


@pytest_asyncio.fixture(loop_scope="session")
async def asyncdb_isolation(asyncdb_running_app: RunningApp) -> AsyncIterator[AsyncConnection]:
    """The test's connection: everything the test and the app do runs in its transaction,
    rolled back when the test ends."""
    database = asyncdb_running_app.database
    async with database.isolated() as connection:
        yield connection
        await _settle(database)


@pytest_asyncio.fixture(loop_scope="session")
async def db(asyncdb_running_app: RunningApp, asyncdb_isolation: AsyncConnection) -> Database:
    """The app's Database, started once per session; this test isolated."""
    return asyncdb_running_app.database


@pytest_asyncio.fixture(loop_scope="session")
async def client(
    asyncdb_running_app: RunningApp, asyncdb_isolation: AsyncConnection
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` calling the app in-process, at ``http://testserver``."""
    transport = httpx.ASGITransport(app=asyncdb_running_app.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def session(
    asyncdb_running_app: RunningApp, asyncdb_isolation: AsyncConnection
) -> AsyncIterator[AsyncSession]:
    """An ``AsyncSession`` in the test's transaction, to arrange data and assert on it.

    Its ``commit()`` makes its writes visible to the app (they are still undone at the
    end of the test). It keeps the objects it loaded: after a request changed them,
    ``await session.refresh(obj)`` (or ``session.expire_all()``) before asserting.
    """
    sessionmaker = asyncdb_running_app.database.sessionmaker
    async with sessionmaker(
        bind=asyncdb_isolation, join_transaction_mode="create_savepoint"
    ) as test_session:
        yield test_session


@pytest_asyncio.fixture(loop_scope="session")
async def db_faults(
    asyncdb_running_app: RunningApp, asyncdb_isolation: AsyncConnection
) -> DatabaseFaults:
    """Make the database unreachable or slow for a block: ``async with
    db_faults.unreachable():``. Needs a server database (PostgreSQL, MariaDB)."""
    forwarder = asyncdb_running_app.forwarder
    if forwarder is None:
        pytest.skip("db_faults needs a database server (PostgreSQL, MariaDB), not SQLite")
    return DatabaseFaults(
        asyncdb_running_app.database, forwarder, await client_port(asyncdb_isolation)
    )


async def _settle(database: Database) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SETTLE_TIMEOUT
    while any(pool["in_use"] for pool in database.pool_status().values()):
        if loop.time() > deadline:
            pytest.fail(
                f"units of work still in progress {_SETTLE_TIMEOUT:g} s after the test "
                "ended: the app left a task running that uses the database",
                pytrace=False,
            )
        await asyncio.sleep(0.01)
