"""Under pytest-xdist each worker works in a database of its own, dropped at its end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from .conftest import UserSuite

pytest_plugins = ["pytester"]

# Each build of the schema is logged: with a template, there is one per run.
SCHEMA_BUILDS = """
import pytest
from tests.fastapi_asyncdb.testing.notes_app import Base

@pytest.fixture(scope="session")
def asyncdb_schema():
    async def build(database):
        with open("schema_builds.txt", "a") as log:
            log.write(database.settings.url.get_secret_value() + "\\n")
        async with database.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
    return build
"""

WORKERS = """
import os
import pytest

@pytest.mark.parametrize("number", range(8))
async def test_each_worker_writes_in_its_own_database(number, client, db):
    assert (await client.post("/notes", json={"body": "same"})).status_code == 201
    with open("databases.txt", "a") as log:
        log.write(f"{os.environ['PYTEST_XDIST_WORKER']} {db.settings.url.get_secret_value()}\\n")
"""


async def existing_databases(base_url: str) -> set[str]:
    engine = create_async_engine(base_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            query = (
                "SELECT datname FROM pg_database"
                if connection.dialect.name == "postgresql"
                else "SELECT schema_name FROM information_schema.schemata"
            )
            return set((await connection.execute(text(query))).scalars())
    finally:
        await engine.dispose()


def test_two_workers_use_two_databases_and_drop_both_with_the_template(
    user_suite: UserSuite,
) -> None:
    user_suite.pytester.makeconftest(SCHEMA_BUILDS)
    user_suite.pytester.makepyfile(test_workers=WORKERS)
    user_suite.run_in_subprocess("-n", "2", "-p", "xdist").assert_outcomes(passed=8)
    builds = (user_suite.pytester.path / "schema_builds.txt").read_text().splitlines()
    log = (user_suite.pytester.path / "databases.txt").read_text().splitlines()
    used = {tuple(line.split(" ", 1)) for line in log}
    assert {worker for worker, _ in used} == {"gw0", "gw1"}
    urls = {url for _, url in used}
    assert len(urls) == 2
    if user_suite.base_url is None:
        assert not any(Path(url.partition(":///")[2]).exists() for url in urls)
        return
    names = {url.rpartition("/")[2] for url in urls}
    base = user_suite.base_url.rpartition("/")[2]
    left = asyncio.run(existing_databases(user_suite.base_url))
    assert not names & left
    assert not [name for name in left if name.startswith(f"{base}_template_")]
    if user_suite.backend == "postgresql":
        # Built once, in the template both workers copied.
        assert len(builds) == 1
        assert "_template_" in builds[0]
    else:
        assert sorted(builds) == sorted(urls)
