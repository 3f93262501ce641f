"""Every way the app or a test writes is undone at the end of the test, and seen before it.

For each way of writing, a user's suite has a test that writes and checks that every
read path sees the write, followed (in file order) by a test that finds nothing left.
The same suite run without isolation fails every one of the latter: they can fail.
"""

from __future__ import annotations

import pytest

from .conftest import UserSuite

pytest_plugins = ["pytester"]

HEADER = """
import asyncio

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fastapi_asyncdb.testing.notes_app import Audit, Note


async def assert_seen(client, session, bodies):
    listed = (await client.get("/notes")).json()  # ReadConnectionDep, Prepared
    assert [note["body"] for note in listed] == bodies
    for note in listed:  # ReadSessionDep
        assert (await client.get(f"/notes/{note['id']}")).json() == note
    assert list(await session.scalars(select(Note.body).order_by(Note.id))) == bodies


async def count_rows(session):
    notes = await session.scalar(select(func.count()).select_from(Note))
    audits = await session.scalar(select(func.count()).select_from(Audit))
    return notes, audits
"""

# What each test writes, then asserts about what it sees (client, session and db in scope).
WRITES = {
    "session_dep_and_background_task": """
    response = await client.post("/notes", json={"body": "a"})
    assert response.status_code == 201
    assert (await client.get("/audits")).json() == ["created"]
    await assert_seen(client, session, ["a"])
""",
    "database_transaction": """
    async with db.transaction() as unit:
        unit.add(Note(body="a"))
    await assert_seen(client, session, ["a"])
""",
    "run_statement": """
    await db.run_statement(insert(Note), [{"body": "a"}, {"body": "b"}])
    await assert_seen(client, session, ["a", "b"])
""",
    "run_statement_in_an_endpoint": """
    session.add(Note(id=7, body="a"))
    await session.commit()
    response = await client.post("/notes/7/rename", json={"body": "renamed"})
    assert response.status_code == 200
    await assert_seen(client, session, ["renamed"])
""",
    "run_transaction_with_a_retry": """
    response = await client.post("/notes/with-retries", json={"body": "a"})
    assert response.status_code == 201
    assert response.json()["attempts"] == (1 if db.backend.name == "sqlite" else 2)
    await assert_seen(client, session, ["a"])
""",
    "test_session_commit": """
    session.add(Note(body="a"))
    await session.commit()
    await assert_seen(client, session, ["a"])
""",
    "read_before_the_unit_of_work": """
    response = await client.post("/notes/read-then-write", json={"body": "a"})
    assert response.status_code == 201
    await assert_seen(client, session, ["a"])
""",
    "read_during_the_unit_of_work": """
    response = await client.post("/notes/write-then-read", json={"body": "a"})
    assert response.status_code == 201
    await assert_seen(client, session, ["a"])
""",
    "commit_in_an_endpoint_that_answers_an_error": """
    response = await client.post("/notes/kept-despite-an-error", json={"body": "a"})
    assert response.status_code == 400
    await assert_seen(client, session, ["a"])
""",
    "error_answer_rolls_the_request_back_within_the_test": """
    session.add(Note(body="kept"))
    await session.flush()
    response = await client.post("/notes/refused", json={"body": "a"})
    assert response.status_code == 422
    await assert_seen(client, session, ["kept"])
""",
    "task_of_the_apps_own_still_writing_when_the_test_ends": """
    response = await client.post("/notes/later", json={"body": "a"})
    assert response.status_code == 202
""",
    "concurrent_requests": """
    bodies = [f"note {i}" for i in range(5)]
    responses = await asyncio.gather(
        *(client.post("/notes", json={"body": body}) for body in bodies)
    )
    assert [response.status_code for response in responses] == [201] * 5
    by_id = sorted((response.json() for response in responses), key=lambda note: note["id"])
    await assert_seen(client, session, [note["body"] for note in by_id])
""",
}

FOOTER = """
async def test_zz_the_database_is_empty_seen_from_outside(asyncdb_url):
    engine = create_async_engine(asyncdb_url)
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(select(func.count()).select_from(Note)) == 0
            assert await connection.scalar(select(func.count()).select_from(Audit)) == 0
    finally:
        await engine.dispose()
"""

# The same suite without isolation: the test's connection is a plain one.
NO_ISOLATION = """
import pytest_asyncio

@pytest_asyncio.fixture(loop_scope="session")
async def asyncdb_isolation(asyncdb_running_app):
    async with asyncdb_running_app.database.engine.connect() as connection:
        yield connection
"""


def isolation_suite() -> str:
    tests = [HEADER]
    for name, body in WRITES.items():
        tests.append(f"\nasync def test_{name}_a_writes(client, session, db):{body}")
        tests.append(
            f"\nasync def test_{name}_b_finds_nothing(session):\n"
            "    assert await count_rows(session) == (0, 0)\n"
        )
    tests.append(FOOTER)
    return "\n".join(tests)


def test_every_write_is_seen_in_its_test_and_gone_in_the_next(user_suite: UserSuite) -> None:
    user_suite.pytester.makepyfile(test_isolation_suite=isolation_suite())
    result = user_suite.run("-v")
    result.assert_outcomes(passed=2 * len(WRITES) + 1)


@pytest.mark.backends("postgresql")
def test_without_isolation_every_check_for_leftovers_fails(user_suite: UserSuite) -> None:
    user_suite.pytester.makeconftest(NO_ISOLATION)
    user_suite.pytester.makepyfile(test_isolation_suite=isolation_suite())
    recorder = user_suite.run_inline()
    failed = {report.nodeid.rpartition("::")[2] for report in recorder.getfailures()}
    assert {f"test_{name}_b_finds_nothing" for name in WRITES} <= failed
    assert "test_zz_the_database_is_empty_seen_from_outside" in failed
