"""Running one case of the secret scan: plant the secret, provoke, collect the evidence."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import delete, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_asyncdb import Database, Prepared, ReadSessionDep, SessionDep, install

from .proxy import forwarder_for
from .secret_scan import Evidence, capturing_logs, find_leaks, new_secret
from .secret_scan_cases import KEYS, VAULT, Kind, metadata, planted_rows, statement_for
from .spans import exported_spans, instrumented_before_engines

# When the cut comes: after connecting and the first, quick run, during the sleep.
CUT_AFTER = 1.0
_schema_ready: set[str] = set()


class MariaDBUser:
    """A MariaDB account of this run whose password is the case's secret.

    The suite's server account has no password; a real password in the URL needs an
    account of its own. Dropped at the end, and any left by a killed run with it.
    """

    def __init__(self) -> None:
        self.name = f"scan_t{os.getpid()}"
        self.created_at: str | None = None

    async def set_password(self, admin_url: str, password: str) -> None:
        engine = _admin(admin_url)
        try:
            async with engine.connect() as connection:
                if self.created_at is None:
                    await self._create(connection, str(make_url(admin_url).database))
                    self.created_at = admin_url
                await connection.execute(
                    text(f"ALTER USER '{self.name}'@'%' IDENTIFIED BY :password"),
                    {"password": password},
                )
        finally:
            await engine.dispose()

    async def _create(self, connection: Any, database: str) -> None:
        users = await connection.execute(
            text(r"SELECT user FROM mysql.user WHERE user LIKE 'scan\_t%'")
        )
        for (name,) in users.all():
            pid = int(re.sub(r"\D", "", name) or 0)
            if name == self.name or not _process_alive(pid):
                await connection.execute(text(f"DROP USER IF EXISTS '{name}'@'%'"))
        await connection.execute(text(f"CREATE USER '{self.name}'@'%' IDENTIFIED BY 'unset'"))
        await connection.execute(
            text(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{self.name}'@'%'")
        )

    async def drop(self) -> None:
        if self.created_at is None:
            return
        engine = _admin(self.created_at)
        try:
            async with engine.connect() as connection:
                await connection.execute(text(f"DROP USER IF EXISTS '{self.name}'@'%'"))
        finally:
            await engine.dispose()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _admin(url: str) -> AsyncEngine:
    return create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


async def _plant(admin_url: str, backend: str, secret: str) -> None:
    """The schema (once per server) and this case's rows, before any capture starts."""
    engine = _admin(admin_url)
    try:
        async with engine.connect() as connection:
            if backend == "sqlite" or backend not in _schema_ready:
                await connection.run_sync(metadata.drop_all)
                await connection.run_sync(metadata.create_all)
                _schema_ready.add(backend)
            await connection.execute(delete(VAULT))
            await connection.execute(delete(KEYS))
            keys, vault = planted_rows(secret)
            await connection.execute(insert(KEYS), keys)
            await connection.execute(insert(VAULT), vault)
    finally:
        await engine.dispose()


@dataclass
class Outcome:
    secret: str
    leaks: list[str]
    evidence: Evidence

    @property
    def failed(self) -> bool:
        return bool(self.evidence.errors) or any(s >= 400 for s in self.evidence.statuses)


async def scan(
    backend: str,
    kind: Kind,
    path: str,
    *,
    echo: bool,
    database_url: str,
    tmp_path: Path,
    mariadb_user: MariaDBUser,
) -> Outcome:
    secret = new_secret()
    await _plant(database_url, backend, secret)
    connect_fails = kind.name == "connect_failure"
    url = make_url(database_url)
    if backend == "mysql":
        # A wrong password is the connect failure MariaDB gives.
        await mariadb_user.set_password(database_url, new_secret() if connect_fails else secret)
        url = url.set(username=mariadb_user.name)
    if backend == "postgresql" and connect_fails:
        url = url.set(database="scan_missing_database")  # the server trusts any password
    if backend == "sqlite" and connect_fails:
        url = url.set(database=str(tmp_path))  # a directory: SQLite cannot open it
    if backend != "sqlite":
        url = url.set(password=secret).update_query_dict({"password": secret})
    forwarder = None
    if kind.name == "lost_connection":
        forwarder, through = forwarder_for(url.render_as_string(hide_password=False))
        url = make_url(through)

    planned = statement_for(kind, path, backend)
    assert planned is not None
    statement, is_write = planned
    evidence = Evidence()
    threads_before = set(threading.enumerate())
    # Traced as docs/observability.md says: instrumented before the engines exist,
    # so the instrumentation's listeners come first; spans of both paths are evidence.
    with capturing_logs(evidence), instrumented_before_engines():
        database = Database(
            url=url.render_as_string(hide_password=False),
            echo=echo,
            echo_pool=echo,
            # Every statement gets a slow-statement line, to be searched too.
            **{"slow_statement_threshold": 1e-9, **kind.settings},
        )
        async with database:
            run = _Run(database, kind, path, (statement, is_write), secret, evidence)
            if forwarder is None:
                await run.capturing()
            else:
                async with forwarder.running():
                    task = asyncio.create_task(run.capturing())
                    await asyncio.sleep(CUT_AFTER)
                await task  # leaving running() cut every connection under the statement
            await evidence.database_state(database)
        await evidence.database_state(database)
        await _sqlite_threads_finished(threads_before)
        # Status descriptions and events included: to_json() writes the whole span.
        for span in exported_spans():
            evidence.add(f"span {span.name}", span.to_json())
    return Outcome(secret, find_leaks(secret, evidence.texts), evidence)


async def _sqlite_threads_finished(threads_before: set[threading.Thread]) -> None:
    """Wait for the threads of aiosqlite connections opened by the case to end.

    A failed aiosqlite connect stops its thread by posting to the event loop from
    that thread; if the test's loop closes first, the thread raises.
    """
    for _ in range(500):
        if not any(
            thread.is_alive() and "_connection_worker_thread" in thread.name
            for thread in set(threading.enumerate()) - threads_before
        ):
            return
        await asyncio.sleep(0.01)


class _Run:
    """One path running one kind's statement, its errors and answers kept as evidence."""

    def __init__(
        self,
        database: Database,
        kind: Kind,
        path: str,
        planned: tuple[Any, bool],
        secret: str,
        evidence: Evidence,
    ) -> None:
        self.database, self.kind, self.path = database, kind, path
        (self.statement, self.is_write), self.secret, self.evidence = planned, secret, evidence
        self.params = kind.params(secret)

    async def capturing(self) -> None:
        try:
            if self.kind.name == "deadlock":
                await self._deadlock()
            elif self.path == "http":
                await self._over_http()
            else:
                await self._direct()
        except Exception as error:
            self.evidence.exception(self.path, error)

    async def _direct(self) -> None:
        database, statement, params = self.database, self.statement, self.params
        if self.path in ("transaction", "read_session"):
            unit = database.transaction() if self.path == "transaction" else database.read_session()
            async with unit as session:
                result = await session.execute(statement, params)
                if not self.is_write:
                    result.all()  # rows are read, so that logging sees them
        elif self.path == "prepared":
            prepared = Prepared(statement)
            async with database.read_connection() as connection:
                if self.kind.warm is not None:
                    await prepared.all(connection, self.kind.warm(self.secret))
                await prepared.all(connection, params)
        else:
            await database.run_statement(statement, params)

    async def _deadlock(self) -> None:
        """Two units of work take the same two rows in opposite orders."""
        first, second = self.params["first"], self.params["second"]
        both_hold_one = asyncio.Barrier(2)

        async def unit(session: Any, one: str, other: str) -> None:
            await session.execute(self.statement, {"p": one})
            await asyncio.wait_for(both_hold_one.wait(), 10)
            await session.execute(self.statement, {"p": other})

        if self.path == "http":
            app = self._app()

            @app.post("/deadlock/{order}")
            async def deadlock(order: int, session: SessionDep) -> dict[str, str]:
                one, other = (first, second) if order == 0 else (second, first)
                await unit(session, one, other)
                return {"status": "ok"}

            async with self._client(app) as client:
                answers = await asyncio.gather(
                    client.post("/deadlock/0"), client.post("/deadlock/1"), return_exceptions=True
                )
            self._keep_answers(answers)
            return

        async def transaction(one: str, other: str) -> None:
            async with self.database.transaction() as session:
                await unit(session, one, other)

        outcomes = await asyncio.gather(
            transaction(first, second), transaction(second, first), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                self.evidence.exception("transaction", outcome)

    async def _over_http(self) -> None:
        app = self._app()
        statement, params, is_write = self.statement, self.params, self.is_write

        @app.post("/write")
        async def write(session: SessionDep) -> dict[str, int]:
            result = await session.execute(statement, params)
            return {"rows": 0 if is_write else len(result.all())}

        @app.post("/read-only-write")
        async def read_only_write(session: ReadSessionDep) -> dict[str, int]:
            await session.execute(statement, params)
            return {"rows": 1}

        route = "/read-only-write" if self.kind.read_only_violation else "/write"
        async with self._client(app) as client:
            answers = [await client.post(route), await client.get("/health/ready")]
        self._keep_answers(answers)

    def _app(self) -> FastAPI:
        app = FastAPI()
        install(app, self.database)
        return app

    def _client(self, app: FastAPI) -> httpx.AsyncClient:
        # Exceptions no handler answers reach the client here, as they reach the
        # server's log in production; the scan keeps them either way.
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")

    def _keep_answers(self, answers: Sequence[Any]) -> None:
        for answer in answers:
            if isinstance(answer, BaseException):
                self.evidence.exception("http", answer)
            else:
                self.evidence.response("http", answer.status_code, answer.headers, answer.text)
