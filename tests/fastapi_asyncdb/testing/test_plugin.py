"""The plugin as a user meets it: a ten-line test of an app, on every database."""

from __future__ import annotations

from .conftest import UserSuite

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
