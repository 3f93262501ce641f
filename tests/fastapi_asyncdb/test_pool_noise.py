"""The pool's ERROR about resetting a connection a fault already killed becomes one
WARNING line without a traceback; every other error stays as it was."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.util import greenlet_spawn

from fastapi_asyncdb import Database

pytestmark = [pytest.mark.usefixtures("clean_environment"), pytest.mark.backends("postgresql")]


def _pool_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name.startswith("sqlalchemy.pool")]


async def _return_a_killed_connection(database: Database) -> None:
    """A raw connection in a transaction whose backend is terminated, then returned:
    the pool's reset (a rollback) fails on the dead connection."""
    raw: Any = await database.engine.raw_connection()
    cursor = raw.cursor()
    await greenlet_spawn(cursor.execute, "select pg_backend_pid()")
    pid = cursor.fetchone()[0]
    async with database.read_connection() as connection:
        await connection.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
    await asyncio.sleep(0.2)  # the server has closed it
    await greenlet_spawn(raw.close)


async def test_resetting_a_killed_connection_logs_one_warning_without_traceback(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Database(url=database_url) as database:
        with caplog.at_level(logging.WARNING, logger="sqlalchemy.pool"):
            await _return_a_killed_connection(database)
        (record,) = _pool_records(caplog)
        assert record.levelno == logging.WARNING
        assert record.exc_info is None
        assert record.exc_text is None
        assert record.getMessage() == (
            "Exception during reset or similar: the connection was already lost "
            "(InterfaceError); the connection is discarded"
        )
        # The pool is whole: the next unit of work gets a live connection.
        async with database.transaction() as session:
            assert (await session.execute(text("select 1"))).scalar_one() == 1


async def test_a_reset_cut_short_by_a_cancellation_logs_one_warning_without_traceback(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # What the pool logs when a client leaves while its connection is being reset.
    async with Database(url=database_url) as database:
        pool_logger: Any = database.engine.sync_engine.pool.logger
        with caplog.at_level(logging.WARNING, logger="sqlalchemy.pool"):
            try:
                raise asyncio.CancelledError
            except asyncio.CancelledError:
                pool_logger.error("Exception during reset or similar", exc_info=True)
        (record,) = _pool_records(caplog)
        assert (record.levelno, record.exc_info, record.exc_text) == (logging.WARNING, None, None)
        assert record.getMessage() == (
            "Exception during reset or similar: the unit of work was cancelled "
            "(CancelledError); the connection is discarded"
        )


async def test_other_errors_of_the_pool_keep_their_level_and_traceback(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Database(url=database_url) as database:
        pool_logger: Any = database.engine.sync_engine.pool.logger
        with caplog.at_level(logging.WARNING, logger="sqlalchemy.pool"):
            try:
                raise ValueError("a reset that failed for another reason")
            except ValueError:
                pool_logger.error("Exception during reset or similar", exc_info=True)
            try:
                raise ConnectionResetError("lost")
            except ConnectionResetError:
                pool_logger.error("Something else entirely", exc_info=True)
        records = _pool_records(caplog)
        assert [(r.levelno, r.getMessage()) for r in records] == [
            (logging.ERROR, "Exception during reset or similar"),
            (logging.ERROR, "Something else entirely"),
        ]
        assert all(record.exc_info for record in records)


async def test_the_filter_is_installed_once_per_pool_logger(database_url: str) -> None:
    async with Database(url=database_url) as first, Database(url=database_url) as second:
        for database in (first, second):
            pool_logger: Any = database.engine.sync_engine.pool.logger
            logger = getattr(pool_logger, "logger", pool_logger)
            names = [type(f).__name__ for f in logger.filters]
            assert names.count("LostConnectionNoise") == 1
