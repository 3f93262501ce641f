"""When a connection is still good to use: the one set of rules for every connection.

A connection is replaced once it is older than ``recycle``, and pinged before use once
it has sat idle for ``ping_after_idle`` seconds (HikariCP's rule: a connection returned
a moment ago is as good as a pinged one, and pinging at every checkout costs a round
trip). The same ``ConnectionHealth`` judges connections the pool hands out (its
checkout event) and warm connections handed on without the pool; both keep their
stamps in the pool entry's ``info``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from .metrics import RoleMetrics

__all__ = ["ConnectionHealth", "StaleConnectionError"]

_BORN = "fastapi_asyncdb.born"
_IDLE_SINCE = "fastapi_asyncdb.idle_since"

Ping = Callable[[Any], None]


class StaleConnectionError(DisconnectionError):
    """A connection failed its health check; the pool replaces it with a fresh one."""


class ConnectionHealth:
    """The rules, and the events that apply them to an engine's pool."""

    def __init__(
        self,
        *,
        ping: Ping | None,
        ping_after_idle: float,
        recycle: float | None,
        metrics: RoleMetrics | None = None,
    ) -> None:
        self._ping = ping
        self._metrics = metrics
        self._ping_after_idle = ping_after_idle
        self._recycle = recycle

    def install(self, engine: Engine) -> None:
        """Stamp connections as they are made and returned; check them at checkout."""

        @event.listens_for(engine, "connect")
        def _born(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            record.info[_BORN] = time.monotonic()
            record.info.pop(_IDLE_SINCE, None)  # never used yet: no need to ping it

        @event.listens_for(engine, "checkin")
        def _returned(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            self.mark_idle(record.info)

        @event.listens_for(engine, "checkout")
        def _check(
            dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
        ) -> None:
            # The pool discards a connection whose checkout raises DisconnectionError and
            # tries again with a new one.
            self.check(dbapi_connection, record.info)

    def mark_idle(self, info: MutableMapping[Any, Any]) -> None:
        info[_IDLE_SINCE] = time.monotonic()

    def expired(self, info: MutableMapping[Any, Any]) -> bool:
        born = info.get(_BORN)
        return (
            self._recycle is not None
            and born is not None
            and (time.monotonic() - born >= self._recycle)
        )

    def needs_ping(self, info: MutableMapping[Any, Any]) -> bool:
        idle_since = info.get(_IDLE_SINCE)  # None: never used since it was made
        return (
            self._ping is not None
            and idle_since is not None
            and time.monotonic() - idle_since >= self._ping_after_idle
        )

    def needs_check(self, info: MutableMapping[Any, Any]) -> bool:
        """Whether ``check`` has anything to do: cheap, and free of I/O."""
        return self.expired(info) or self.needs_ping(info)

    def check(self, dbapi_connection: Any, info: MutableMapping[Any, Any]) -> None:
        """Raise ``StaleConnectionError`` if the connection must not be used.

        Runs in SQLAlchemy's greenlet: the ping is I/O.
        """
        if self.expired(info):
            raise StaleConnectionError("connection older than the recycle time")
        if not self.needs_ping(info):
            return
        assert self._ping is not None
        try:
            self._ping(dbapi_connection)
        except Exception as error:
            if self._metrics is not None:
                self._metrics.ping_failures += 1
            raise StaleConnectionError("stale connection: the ping failed") from error
        self.mark_idle(info)
