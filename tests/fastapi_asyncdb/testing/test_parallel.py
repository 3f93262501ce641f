"""Under pytest-xdist each worker works in a database of its own, dropped at its end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from .conftest import UserSuite

pytest_plugins = ["pytester"]

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


def test_two_workers_use_two_databases_and_drop_both(user_suite: UserSuite) -> None:
    user_suite.pytester.makepyfile(test_workers=WORKERS)
    user_suite.run_in_subprocess("-n", "2", "-p", "xdist").assert_outcomes(passed=8)
    log = (user_suite.pytester.path / "databases.txt").read_text().splitlines()
    used = {tuple(line.split(" ", 1)) for line in log}
    assert {worker for worker, _ in used} == {"gw0", "gw1"}
    urls = {url for _, url in used}
    assert len(urls) == 2
    if user_suite.base_url is None:
        assert not any(Path(url.partition(":///")[2]).exists() for url in urls)
    else:
        names = {url.rpartition("/")[2] for url in urls}
        assert not names & asyncio.run(existing_databases(user_suite.base_url))
