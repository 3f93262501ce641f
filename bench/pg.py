"""Connections for the harness itself, patient with a PostgreSQL that is restarting.

The machine is shared: other sessions' fault tests may restart the server at any time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Final

import asyncpg

from bench.config import ASYNCPG_DSN

CONNECT_PATIENCE_S: Final = 30.0
_RETRYABLE: Final = (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)


async def connect(
    dsn: str = ASYNCPG_DSN, patience_s: float = CONNECT_PATIENCE_S
) -> asyncpg.Connection:
    """asyncpg.connect, retried while the server refuses or is starting up (bounded)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return await asyncpg.connect(dsn, timeout=5)
        except _RETRYABLE:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.25)


async def postmaster_started() -> str | None:
    """When PostgreSQL last started; a change across a measurement means it restarted."""
    try:
        conn = await connect()
    except (*_RETRYABLE, asyncpg.PostgresError):
        return None
    try:
        started = await conn.fetchval("SELECT pg_postmaster_start_time()::text")
        return str(started)
    finally:
        await conn.close()


class DatabaseWatch:
    """Notices, during a measurement, a PostgreSQL that restarted or stopped answering.

    Other sessions' fault tests on this machine restart PostgreSQL or SIGSTOP it; a
    measurement taken meanwhile says nothing about the contenders. A thread with its own
    event loop probes `SELECT 1` every PROBE_INTERVAL_S and keeps the slowest answer.
    """

    PROBE_INTERVAL_S: Final = 0.1
    STALL_LIMIT_S: Final = 0.5

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-watch", daemon=True)
        self.slowest_probe_s = 0.0
        self.probe_failures = 0
        self._started_at: str | None = None
        self._ended_at: str | None = None

    def __enter__(self) -> DatabaseWatch:
        self._started_at = asyncio.run(postmaster_started())
        self._thread.start()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=CONNECT_PATIENCE_S + 5)
        self._ended_at = asyncio.run(postmaster_started())

    def _run(self) -> None:
        try:
            asyncio.run(self._probe_until_stopped())
        except BaseException:
            # Whatever killed the watch, the measurement it covered is not vouched for.
            self.probe_failures += 1
            raise

    async def _probe_until_stopped(self) -> None:
        conn: asyncpg.Connection | None = None
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                if conn is None or conn.is_closed():
                    conn = await connect()
                await conn.fetchval("SELECT 1", timeout=CONNECT_PATIENCE_S)
            except Exception:
                # A restart can leave the connection in any state (asyncpg raises even
                # InternalClientError): drop it and count the failure.
                self.probe_failures += 1
                if conn is not None:
                    conn.terminate()
                conn = None
            self.slowest_probe_s = max(self.slowest_probe_s, time.monotonic() - began)
            await asyncio.sleep(self.PROBE_INTERVAL_S)
        if conn is not None:
            await conn.close()

    @property
    def disturbance(self) -> str | None:
        """Why the measurement cannot be trusted, or None."""
        if self._thread.is_alive():
            return "the database watch did not stop"
        if self._started_at != self._ended_at:
            return "PostgreSQL restarted"
        if self.probe_failures:
            return f"PostgreSQL refused {self.probe_failures} probe(s)"
        if self.slowest_probe_s > self.STALL_LIMIT_S:
            return f"PostgreSQL stalled {self.slowest_probe_s:.2f} s on SELECT 1"
        return None
