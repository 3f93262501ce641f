"""Known statements on real databases, each counted once by the path that ran it.

``kind``: ``read`` for what SQLAlchemy ran on the read engine, ``write`` on the
primary, ``fast_path`` for what the library ran on the driver (PostgreSQL only).
SQLAlchemy's cursor events see the statements it sends, not the ``BEGIN`` and
``COMMIT`` the drivers send themselves; SQLite's backend begins each write transaction
with a ``BEGIN IMMEDIATE`` of its own, which is a statement and counted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import Integer, bindparam, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from fastapi_asyncdb import Database, Prepared
from tests.conftest import prepare_server

from .metric_samples import histogram, sample
from .models import Note, create_tables
from .prepared_runs import sqlalchemy_runs

pytestmark = [pytest.mark.usefixtures("clean_environment")]

NOTE_BODY = Prepared(select(Note.body).where(Note.id == bindparam("id")))
RATIO = Prepared(select(Note.id / bindparam("divisor", type_=Integer)).where(Note.id == 1))
ADD_NOTE = insert(Note)
KINDS = {"read": ("read", "fast_path"), "write": ("write", "fast_path")}


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'metrics.db'}"
    return prepare_server(backend, "metrics_test")


def statements(database: Database) -> dict[str, float]:
    """Statements counted per role, kind and outcome, to compare before and after."""
    return {
        f"{role} {kind} {outcome}": sample(
            database, "statement_duration_seconds", role=role, kind=kind, outcome=outcome
        )
        for role, kinds in KINDS.items()
        for kind in kinds
        for outcome in ("ok", "error")
    }


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before if after[key] != before[key]}


def fast(database: Database) -> bool:
    return database.backend.name == "postgresql"  # asyncpg, its only driver


async def seed(database: Database) -> None:
    await create_tables(database)
    async with database.transaction() as session:
        session.add(Note(id=1, body="one"))


async def test_each_statement_is_counted_once_by_the_kind_of_path_that_ran_it(url: str) -> None:
    async with Database(url=url) as database:
        await seed(database)
        before = statements(database)
        for _ in range(5):
            async with database.read_session() as session:
                assert (await session.execute(select(Note.body))).scalar_one() == "one"
        async with database.transaction() as session:
            await session.execute(select(Note.id))
            session.add(Note(id=2, body="two"))  # its INSERT at the commit's flush
        async with database.read_connection() as connection:
            for _ in range(4):
                assert (await NOTE_BODY.one(connection, {"id": 1})).body == "one"
        for number in range(3):
            await database.run_statement(ADD_NOTE.values(id=10 + number, body=f"n{number}"))
        for number in range(3):  # one statement object: learnt once, then on the driver
            await database.run_statement(ADD_NOTE, {"id": 20 + number, "body": f"m{number}"})
        counted = moved(before, statements(database))
    begins = 1 if database.backend.name == "sqlite" else 0  # BEGIN IMMEDIATE
    # The first run of a Prepared read, and of a write per statement, is SQLAlchemy's.
    driver_reads, driver_writes = (3, 2) if fast(database) else (0, 0)
    expected = {
        "read read ok": 5 + 4 - driver_reads,
        "write write ok": (2 + begins) + (6 - driver_writes) * (1 + begins),
        "read fast_path ok": driver_reads,
        "write fast_path ok": driver_writes,
    }
    assert counted == {key: value for key, value in expected.items() if value}


async def test_a_failing_statement_is_counted_as_an_error_on_either_path(url: str) -> None:
    async with Database(url=url) as database:
        await seed(database)
        before = statements(database)
        async with database.read_connection() as connection:
            with pytest.raises(DBAPIError):
                await connection.execute(text("SELECT missing FROM notes"))
        with pytest.raises(IntegrityError):
            async with database.transaction() as session:
                await session.execute(insert(Note).values(id=1, body="again"))
        counted = moved(before, statements(database))
    begins = 1 if database.backend.name == "sqlite" else 0
    assert counted == {
        "read read error": 1,
        "write write error": 1,
        **({"write write ok": begins} if begins else {}),
    }


@pytest.mark.backends("postgresql")  # the only backend with a fast path
async def test_a_failing_statement_on_the_driver_is_a_fast_path_error_not_a_slow_one(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fastapi_asyncdb.statements")
    async with Database(url=url, slow_statement_threshold=1e-9) as database:
        await seed(database)
        statement = ADD_NOTE.values(id=30, body="thirty")
        await database.run_statement(statement)  # learnt
        async with database.read_connection() as connection:
            assert await RATIO.scalar(connection, {"divisor": 1}) == 1  # learnt
            before, logged = statements(database), len(caplog.records)
            with pytest.raises(DBAPIError, match="division by zero"):
                await RATIO.scalar(connection, {"divisor": 0})
        with pytest.raises(IntegrityError):
            await database.run_statement(statement)
        counted = moved(before, statements(database))
    assert counted == {"read fast_path error": 1, "write fast_path error": 1}
    assert logged > 0  # every statement is slow at this threshold, but for failures
    assert len(caplog.records) == logged


async def test_with_metrics_on_prepared_reads_still_run_on_the_driver(url: str) -> None:
    async with Database(url=url, metrics=True) as database:
        await seed(database)
        with sqlalchemy_runs() as runs:
            async with database.read_connection() as connection:
                for _ in range(6):
                    assert (await NOTE_BODY.one(connection, {"id": 1})).body == "one"
        timed = histogram(
            database, "statement_duration_seconds", role="read", kind="fast_path", outcome="ok"
        )
    assert runs.of(NOTE_BODY.statement) == (1 if fast(database) else 6)
    assert timed.count == (5 if fast(database) else 0)
    assert timed.sum >= 0


async def test_with_metrics_off_no_statement_is_timed(url: str) -> None:
    async with Database(url=url, metrics=False) as database:
        await seed(database)
        with sqlalchemy_runs() as runs:
            async with database.read_connection() as connection:
                for _ in range(3):
                    await NOTE_BODY.one(connection, {"id": 1})
        counted = statements(database)
    assert runs.of(NOTE_BODY.statement) == (1 if fast(database) else 3)
    assert set(counted.values()) == {0}
