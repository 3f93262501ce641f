"""``db_faults``: the database under test made unreachable or slow for the length of a block.

The Database under test reaches its server through a ``Forwarder`` whenever a test of
the run uses ``db_faults``; the faults happen there, on real sockets, and the app meets
them as it would in production: refused connects trip its breaker, lost connections
and timeouts become 503 answers.

``unreachable()``: new connections are refused and the app's open ones are reset.
Isolation is suspended for the block: units of work go to the pools (where they fail),
while the test's own connection, the one holding the test's transaction, is kept out of
the fault and used by nothing. At the end of the block the breakers must close again
(the app recovers as it would) before the test goes on.

``slow(delay)``: every answer from the server waits ``delay`` seconds first; isolation
goes on, and the test's connection is slowed too. A client-side command timeout
(``DB_COMMAND_TIMEOUT``) there closes the test's connection, which ends the test's
isolation early: its later statements fail. A server-side statement timeout
(``DB_STATEMENT_TIMEOUT``) does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..connections import ConnectionSource, PooledConnections
from ..database import Database
from ..role import Role
from .forwarder import Forwarder

__all__ = ["DatabaseFaults", "client_port"]


class DatabaseFaults:
    """What the ``db_faults`` fixture gives a test."""

    def __init__(self, database: Database, forwarder: Forwarder, own_port: int) -> None:
        self.database = database
        self.forwarder = forwarder
        self._own_port = own_port

    @asynccontextmanager
    async def unreachable(self, *, recovery_timeout: float = 10.0) -> AsyncIterator[None]:
        """The server refuses connections and resets the app's open ones, for the block."""
        roles = _roles(self.database)
        saved: list[tuple[ConnectionSource, bool]] = []
        for role in roles:
            saved.append((role.connections, role.isolated))
            role.connections, role.isolated = PooledConnections(role.engine), False
        self.forwarder.refusing = True
        self.forwarder.cut(keep={self._own_port})
        try:
            # The pools' connections are gone; dropping them makes every unit of work
            # connect, and fail, as it would once the server is down.
            for role in roles:
                await role.engine.dispose()
            yield
        finally:
            self.forwarder.refusing = False
            for role, (source, isolated) in zip(roles, saved, strict=True):
                role.connections, role.isolated = source, isolated
        await self._recovered(recovery_timeout)

    @asynccontextmanager
    async def slow(self, delay: float) -> AsyncIterator[None]:
        """Every answer from the server waits ``delay`` seconds, for the block."""
        previous, self.forwarder.delay = self.forwarder.delay, delay
        try:
            yield
        finally:
            self.forwarder.delay = previous

    async def _recovered(self, within: float) -> None:
        """Wait until the app's breakers have seen the database again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not all(pool["reachable"] for pool in self.database.pool_status().values()):
            if loop.time() > deadline:
                raise TimeoutError(f"the app did not see the database again within {within:g} s")
            await asyncio.sleep(0.02)


async def client_port(connection: AsyncConnection) -> int:
    """The port the server sees this connection come from."""
    if connection.dialect.name == "postgresql":
        port = (await connection.execute(text("SELECT inet_client_port()"))).scalar_one()
        return int(port)
    host = (
        await connection.execute(
            text("SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()")
        )
    ).scalar_one()
    return int(str(host).rpartition(":")[2])


def _roles(database: Database) -> list[Role]:
    # The testing package is the library's own; it reaches into the Database here only.
    roles = [database._primary, database._reader]
    if roles[0] is None or roles[1] is None:
        raise RuntimeError("the database is not started")
    return [roles[0], roles[1]]
