"""``db_faults``: the app's 503 paths, tested through a real forwarder, without leaving the
test's isolation."""

from __future__ import annotations

import pytest

from .conftest import UserSuite

pytest_plugins = ["pytester"]

FAULTS = """
import time

async def test_the_app_answers_503_while_the_database_is_unreachable(client, db_faults):
    assert (await client.post("/notes", json={"body": "before"})).status_code == 201
    async with db_faults.unreachable():
        read = await client.get("/notes")
        write = await client.post("/notes", json={"body": "during"})
        health = await client.get("/health/ready")
    assert (read.status_code, write.status_code, health.status_code) == (503, 503, 503)
    assert read.headers["Retry-After"] and write.headers["Retry-After"]
    # Recovered, in the same transaction: the write before the fault is still there.
    assert [note["body"] for note in (await client.get("/notes")).json()] == ["before"]

async def test_a_slow_database_slows_every_request(client, db_faults):
    async with db_faults.slow(0.2):
        started = time.perf_counter()
        assert (await client.post("/notes", json={"body": "slow"})).status_code == 201
        assert time.perf_counter() - started >= 0.2
    assert [note["body"] for note in (await client.get("/notes")).json()] == ["slow"]

async def test_the_next_test_finds_nothing_and_a_reachable_database(client):
    assert (await client.get("/notes")).json() == []
    assert (await client.get("/health/ready")).status_code == 200
"""


@pytest.mark.backends("postgresql", "mysql")
def test_faults_give_503_then_recover_inside_the_tests_isolation(user_suite: UserSuite) -> None:
    user_suite.pytester.makepyfile(test_faults=FAULTS)
    user_suite.run().assert_outcomes(passed=3)


@pytest.mark.backends("sqlite")
def test_on_sqlite_a_test_using_faults_is_skipped_saying_why(user_suite: UserSuite) -> None:
    user_suite.pytester.makepyfile(test_faults=FAULTS)
    result = user_suite.run("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*db_faults needs a database server*"])
