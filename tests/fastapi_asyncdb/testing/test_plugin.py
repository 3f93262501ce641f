"""The plugin as a user meets it: a ten-line test of an app, on every database."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

from .conftest import REPOSITORY, UserSuite

pytest_plugins = ["pytester"]

FIRST_TEST = """
from sqlalchemy import select
from tests.fastapi_asyncdb.testing.notes_app import Audit, Note

async def test_a_note_is_stored_audited_and_read_back(client, session):
    response = await client.post("/notes", json={"body": "hello"})
    assert response.status_code == 201
    note = await session.get(Note, response.json()["id"])
    assert note.body == "hello"
    assert (await client.get(f"/notes/{note.id}")).json() == {"id": note.id, "body": "hello"}
    assert await session.scalar(select(Audit.event)) == "created"
"""


def test_a_first_test_of_ten_lines_passes_with_the_plugins_fixtures(user_suite: UserSuite) -> None:
    user_suite.pytester.makepyfile(test_first=FIRST_TEST)
    user_suite.run().assert_outcomes(passed=1)


CUSTOM_LIFESPAN = """
from tests.fastapi_asyncdb.testing import notes_app

async def test_the_lifespan_state_and_app_state_reach_requests(client):
    response = await client.get("/greeting")
    assert response.json() == {"greeting": "hello", "started": True}

async def test_the_database_started_by_the_apps_lifespan_serves_writes(client, db):
    assert (await client.post("/notes", json={"body": "a"})).status_code == 201
    assert db is notes_app.custom_db and db.is_started

async def test_the_lifespan_ran_once_for_the_session(client):
    assert notes_app.LIFESPAN_STARTS == ["custom_app"]
    assert (await client.get("/notes")).json() == []
"""


def test_an_app_with_a_lifespan_of_its_own_that_enters_the_databases_runs_it_once(
    user_suite: UserSuite,
) -> None:
    user_suite.ini["asyncdb_app"] = "tests.fastapi_asyncdb.testing.notes_app:custom_app"
    user_suite.pytester.makepyfile(test_custom=CUSTOM_LIFESPAN)
    user_suite.run().assert_outcomes(passed=3)


LEDGER = """
import pytest
from sqlalchemy import make_url
from ledger.app import create_app

@pytest.fixture(scope="session")
def asyncdb_app():
    # The schema comes from the plugin's Alembic run, not from the ledger's startup.
    return create_app(migrate_on_startup=False)

async def test_a_transfer_moves_money(client):
    alice = (await client.post("/accounts", json={"owner": "alice", "balance": 100})).json()
    bob = (await client.post("/accounts", json={"owner": "bob", "balance": 0})).json()
    body = {"from_account": alice["id"], "to_account": bob["id"], "amount": 30}
    response = await client.post("/transfers", json=body, headers={"Idempotency-Key": "k1"})
    assert response.status_code == 201, response.text
    assert (await client.get(f"/accounts/{bob['id']}")).json()["balance"] == 30

async def test_the_next_test_finds_no_account(client, session):
    from sqlalchemy import text
    assert (await client.get("/accounts/total")).json()["accounts"] == 0
    assert await session.scalar(text("SELECT count(*) FROM alembic_version")) == 1
"""


def test_the_ledger_migrated_by_alembic_runs_its_own_lifespan_under_isolation(
    user_suite: UserSuite,
) -> None:
    user_suite.ini["asyncdb_schema"] = f"alembic:{REPOSITORY / 'ledger/migrations/alembic.ini'}"
    user_suite.pytester.makepyfile(test_ledger=LEDGER)
    user_suite.run().assert_outcomes(passed=2)


OWN_FIXTURES = """
import pytest
from sqlalchemy import make_url

@pytest.fixture
def client():
    return "the user's own client"

@pytest.fixture
def session():
    return "the user's own session"

def test_a_fixture_of_the_users_wins(client, session):
    assert client == "the user's own client"
    assert session == "the user's own session"

async def test_the_plugins_other_fixtures_do_not_depend_on_the_overridden_names(db):
    async with db.transaction() as unit:
        assert unit.bind is not None
"""


def test_users_fixtures_of_the_same_name_win(user_suite: UserSuite) -> None:
    user_suite.pytester.makepyfile(test_own=OWN_FIXTURES)
    user_suite.run().assert_outcomes(passed=2)


APP_FROM_A_FIXTURE = """
import pytest
from sqlalchemy import make_url
from tests.fastapi_asyncdb.testing import notes_app

@pytest.fixture(scope="session")
def asyncdb_app():
    return notes_app.app
"""


def test_the_app_can_come_from_a_fixture_and_tests_run_in_strict_mode(
    user_suite: UserSuite,
) -> None:
    user_suite.ini.update(asyncdb_app=None, asyncio_mode="strict")
    user_suite.pytester.makeconftest(APP_FROM_A_FIXTURE)
    user_suite.pytester.makepyfile(test_first=FIRST_TEST)
    user_suite.run().assert_outcomes(passed=1)


@pytest.mark.backends("sqlite")
def test_without_an_app_the_error_says_how_to_name_it(user_suite: UserSuite) -> None:
    user_suite.ini["asyncdb_app"] = None
    user_suite.pytester.makepyfile(test_first=FIRST_TEST)
    result = user_suite.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixtures need the app under test: set asyncdb_app*"])


USERS_ASYNC_FIXTURES = """
import asyncio
import pytest
from sqlalchemy import make_url
from tests.fastapi_asyncdb.testing.notes_app import Note

LOOPS = {}

@pytest.fixture
async def fixture_loop():
    return asyncio.get_running_loop()

@pytest.fixture
async def note(session):
    row = Note(body="arranged")
    session.add(row)
    await session.commit()
    return row

@pytest.fixture
async def listed(client, note):
    return (await client.get("/notes")).json()

async def test_fixtures_that_arrange_data_run_on_the_databases_loop(listed, note, fixture_loop):
    assert listed == [{"id": note.id, "body": "arranged"}]
    assert fixture_loop is asyncio.get_running_loop()
    LOOPS["database"] = fixture_loop

async def test_the_same_fixture_in_a_test_without_the_database_keeps_its_loop(fixture_loop):
    assert fixture_loop is asyncio.get_running_loop()
    assert fixture_loop is not LOOPS["database"]
"""


def test_users_async_fixtures_work_with_the_plugins_without_choosing_a_loop(
    user_suite: UserSuite,
) -> None:
    user_suite.pytester.makepyfile(test_own_fixtures=USERS_ASYNC_FIXTURES)
    user_suite.run().assert_outcomes(passed=2)


FAILING_STARTUP = """
from contextlib import asynccontextmanager
import pytest
from sqlalchemy import make_url
from fastapi import FastAPI
from fastapi_asyncdb import Database, install

@pytest.fixture(scope="session")
def asyncdb_app():
    db = Database()

    @asynccontextmanager
    async def lifespan(app):
        async with db.lifespan(app):
            raise LookupError("the cache server is not configured")
            yield

    app = FastAPI(lifespan=lifespan)
    install(app, db)
    return app
"""


@pytest.mark.backends("sqlite")
def test_an_app_whose_startup_fails_errors_its_tests_with_the_apps_reason(
    user_suite: UserSuite,
) -> None:
    user_suite.pytester.makeconftest(FAILING_STARTUP)
    user_suite.pytester.makepyfile(test_first=FIRST_TEST)
    result = user_suite.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*LookupError: the cache server is not configured*"])
    result.stdout.fnmatch_lines(["*LifespanError: the app's startup failed*"])


OVERRIDE_AS_STRING = """
import pytest
from sqlalchemy import make_url

@pytest.fixture(scope="session")
def asyncdb_url():
    return {url!r}
"""

USES_THE_OVERRIDE = """
from sqlalchemy import text

async def test_the_database_is_the_overrides(db):
    async with db.transaction() as unit:
        assert (await unit.execute(text("SELECT 1"))).scalar() == 1
    assert db.settings.sqlalchemy_url.database == {database!r}

async def test_a_failing_test_shows_no_password_in_its_locals(db):
    settings = db.settings
    assert settings.pool_size == -1
"""


@pytest.mark.backends("sqlite", "postgresql")
def test_an_asyncdb_url_override_returning_a_string_is_taken_and_its_password_never_shown(
    user_suite: UserSuite, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The contract before asyncdb_url became a URL. In a subprocess: an in-process run
    # trips a CPython 3.11 AST bug.
    if user_suite.base_url is None:
        database = str(tmp_path_factory.mktemp("own") / "own.db")
        url = f"sqlite+aiosqlite:///{database}"
        password = None
    else:
        password = "Pw0rdSecret42"  # what the server's trust authentication ignores
        base = make_url(user_suite.base_url).set(password=password)
        database, url = str(base.database), base.render_as_string(hide_password=False)
    user_suite.pytester.makeconftest(OVERRIDE_AS_STRING.format(url=url))
    user_suite.pytester.makepyfile(test_own=USES_THE_OVERRIDE.format(database=database))
    result = user_suite.run_in_subprocess("--showlocals", "--tb=long")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*assert 10 == -1*"])
    if password is not None:
        assert password not in result.stdout.str() + result.stderr.str()


@pytest.mark.backends("sqlite")
def test_an_asyncdb_url_override_of_no_url_fails_in_one_line_without_echoing_it(
    user_suite: UserSuite,
) -> None:
    user_suite.pytester.makeconftest(OVERRIDE_AS_STRING.format(url="not a url Pw0rdSecret42"))
    user_suite.pytester.makepyfile(test_own=USES_THE_OVERRIDE.format(database="x"))
    result = user_suite.run_in_subprocess("--showlocals", "--tb=long")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*asyncdb_url: the override returned no valid SQLAlchemy URL*"])
    assert "Pw0rdSecret42" not in result.stdout.str() + result.stderr.str()
