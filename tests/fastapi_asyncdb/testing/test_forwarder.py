"""The forwarder in front of a real server: cut all but one connection, refuse, delay."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_asyncdb.testing import Forwarder
from fastapi_asyncdb.testing.faults import client_port

pytestmark = pytest.mark.backends("postgresql", "mysql")


@pytest.fixture
async def forwarder(database_url: str) -> AsyncIterator[Forwarder]:
    forwarder = Forwarder.for_url(make_url(database_url))
    await forwarder.start()
    yield forwarder
    await forwarder.close()


@pytest.fixture
async def engine(forwarder: Forwarder, database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(forwarder.url_through(make_url(database_url)), poolclass=NullPool)
    yield engine
    await engine.dispose()


async def test_cut_resets_every_connection_but_the_ones_kept(
    forwarder: Forwarder, engine: AsyncEngine
) -> None:
    async with engine.connect() as kept, engine.connect() as lost:
        port = await client_port(kept)
        assert port in forwarder.upstream_ports
        assert forwarder.cut(keep={port}) == 1
        assert await kept.scalar(text("SELECT 1")) == 1
        with pytest.raises(DBAPIError):
            await lost.execute(text("SELECT 1"))
        await lost.invalidate()


async def test_refusing_fails_new_connections_at_once(
    forwarder: Forwarder, engine: AsyncEngine
) -> None:
    forwarder.refusing = True
    started = time.perf_counter()
    with pytest.raises((DBAPIError, OSError)):
        async with engine.connect():
            pass
    assert time.perf_counter() - started < 2
    forwarder.refusing = False
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT 1")) == 1


async def test_delay_holds_every_answer_back(forwarder: Forwarder, engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        forwarder.delay = 0.1
        started = time.perf_counter()
        await connection.execute(text("SELECT 1"))
        assert time.perf_counter() - started >= 0.1


def _open_sockets() -> int:
    return sum(
        1 for fd in os.listdir("/proc/self/fd") if _is_socket(os.path.join("/proc/self/fd", fd))
    )


def _is_socket(path: str) -> bool:
    try:
        return os.readlink(path).startswith("socket:")
    except OSError:
        return False


async def test_closing_leaves_no_socket_open_for_the_collector(database_url: str) -> None:
    # Sockets closed only on the loop's next turns would outlive a test whose loop closes
    # at once, and the collector would warn about them in some later test.
    before = _open_sockets()
    forwarder = Forwarder.for_url(make_url(database_url))
    await forwarder.start()
    engine = create_async_engine(forwarder.url_through(make_url(database_url)), poolclass=NullPool)
    connection = await engine.connect()
    try:
        assert await connection.scalar(text("SELECT 1")) == 1
        await forwarder.close()  # cuts the client's connection in the middle of its life
        # The forwarder's three sockets (listening, accepted, upstream) are closed by the
        # time close() returns; at most the client's own is left.
        assert _open_sockets() <= before + 1
    finally:
        await connection.invalidate()
        await engine.dispose()
    assert _open_sockets() == before
