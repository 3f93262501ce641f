"""fastapi-asyncdb's pytest plugin: tests of a FastAPI app on a real database, each one
isolated by a rollback.

Installed with ``pip install 'fastapi-asyncdb[testing]'`` (pytest finds it by its entry
point). Point it at the app::

    # pyproject.toml
    [tool.pytest.ini_options]
    asyncio_mode = "auto"
    asyncdb_app = "myapp.main:app"                           # install(app, db) was called
    asyncdb_schema = "metadata:myapp.models:Base.metadata"   # or "alembic:alembic.ini"

and write tests::

    async def test_a_note_is_stored_and_read_back(client, session):
        response = await client.post("/notes", json={"body": "hello"})
        assert response.status_code == 201
        note = await session.get(Note, response.json()["id"])
        assert note.body == "hello"

Fixtures (your own fixtures of the same names win):

=====================  ========  ========================================================
``client``             function  ``httpx.AsyncClient`` calling the app in-process
``session``            function  ``AsyncSession`` in the test's transaction: arrange, assert
``db``                 function  the app's ``Database`` (started once per session)
``db_faults``          function  ``async with db_faults.unreachable():`` / ``.slow(0.5)``
``asyncdb_isolation``  function  the test's connection, whose transaction is rolled back
``asyncdb_app``        session   the app; override to build it in code
``asyncdb_database``   session   the app's ``Database``; override if not on the app
``asyncdb_schema``     session   an async function creating the schema; override freely
``asyncdb_url``        session   this process's test database (created, then dropped)
``asyncdb_running_app`` session  the app with its lifespan entered (``.asgi``, ``.state``)
=====================  ========  ========================================================

Options (command line, then environment, then ini):

- ``--asyncdb-app`` / ``asyncdb_app``: ``package.module:attribute`` of the app.
- ``--asyncdb-url`` / ``TEST_DATABASE_URL`` / ``asyncdb_url``: the server and base name
  (``postgresql+asyncpg://user@host/app``, ``mysql+asyncmy://...``,
  ``sqlite+aiosqlite:///path/app.db``). Each process (each pytest-xdist worker) gets a
  database of its own beside it, ``<base>_<worker>_t<pid>``, created with its schema
  when first needed and dropped at the end; the named database is never written. On
  PostgreSQL under xdist the schema is built once per run, in
  ``<base>_template_<run>``, which each worker copies (``CREATE DATABASE ... TEMPLATE``).
  Default: a SQLite file in pytest's temporary directory. The app's Database is pointed
  there with ``db.configure(url=...)`` before it starts: no module is reloaded.
- ``--asyncdb-schema`` / ``asyncdb_schema``: ``metadata:module:attribute`` (a
  ``MetaData``; ``create_all``) or ``alembic:path/alembic.ini`` (relative to pytest's
  configuration file; ``@revision`` to stop before ``head``; the env.py gets the
  connection as ``config.attributes["connection"]``). Unset: the app makes its schema.

How a test is isolated: ``client``, ``session``, ``db`` and ``db_faults`` run the test
inside ``Database.isolated()``. One connection, in a transaction rolled back when the
test ends, serves every unit of work of the app and of the test: ``SessionDep``,
``db.transaction()``, ``run_transaction`` (retries included), ``run_statement``,
background tasks. Their commits are savepoints, so they behave as usual, reads see
them (``ReadSessionDep``, ``ReadConnectionDep``, ``Prepared``), and none survives the
test. The app's lifespan runs once per session, on pytest-asyncio's session event loop;
async tests using these fixtures run on that loop, and so do their async fixtures,
unless the test or the fixture chose its loop scope itself.

The plugin is inert in tests that use none of its fixtures; ``-p no:fastapi_asyncdb``
turns it off.

Known limits:

- Read-only enforcement by the server does not apply inside the test: reads share the
  writable connection, so a write through ``ReadSessionDep`` succeeds instead of
  raising ``ReadOnlySessionError``.
- On MariaDB, DDL in a test (``CREATE TABLE``...) commits implicitly: it and everything
  before it in the test stay.
- One connection: units of work of concurrent requests run one after another, and a
  statement that fails on PostgreSQL outside a unit of work (``ReadConnectionDep``,
  ``Prepared``) aborts the test's transaction.
- Work the app leaves running after a response must use the database before the test
  ends: the test waits for units of work in progress, not for tasks yet to begin one;
  a later write commits for real and lands in a later test.
- Reads see the request's uncommitted writes (production's read dependencies do not).
- A unit of work waiting for one in another task (``asyncio.gather(db.run_statement(
  ...))`` inside ``SessionDep``) raises ``SharedConnectionTimeoutError`` after
  ``pool_timeout`` instead of running as in production.
- Writes through ``db.engine`` directly bypass the isolation and persist.

``asyncdb_url`` is a SQLAlchemy ``URL``, whose repr and ``str()`` mask the password
(``render_as_string(hide_password=False)`` gives it whole); an override may return a
``URL`` or a string.
"""

from __future__ import annotations

import importlib.util

import pytest

from .options import (
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_fixture_setup,
    pytest_pycollect_makeitem,
    pytest_sessionfinish,
    pytest_testnodedown,
)

__all__ = [
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_fixture_setup",
    "pytest_pycollect_makeitem",
    "pytest_sessionfinish",
    "pytest_testnodedown",
]

_NEEDS = ("httpx", "pytest_asyncio")

if all(importlib.util.find_spec(name) is not None for name in _NEEDS):
    from .fixtures import (  # noqa: F401 - pytest finds fixtures in this module's namespace
        _asyncdb_url,
        asyncdb_app,
        asyncdb_database,
        asyncdb_isolation,
        asyncdb_running_app,
        asyncdb_schema,
        asyncdb_url,
        client,
        db,
        db_faults,
        session,
    )
else:

    def pytest_configure(config: pytest.Config) -> None:
        # Installed without the [testing] extra: stay out of the way unless asked for.
        if config.getini("asyncdb_app") or config.getoption("asyncdb_app"):
            raise pytest.UsageError(
                "asyncdb_app is set but the plugin's dependencies are missing: "
                "pip install 'fastapi-asyncdb[testing]'"
            )
