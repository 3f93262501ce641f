"""SIGTERM under real servers, mid-load, on PostgreSQL: nothing is cut mid-transaction.

The app (``drain_app``) holds each request's transaction open a while before its
commit, and runs units of work from a background task the app never stops. The
server runs in a subprocess: uvicorn, uvicorn with two workers, gunicorn with two
uvicorn workers. Clients send requests back to back, each on a fresh connection; the
test sends SIGTERM to the server's main process mid-load, as Kubernetes does, and
then checks each request's fate against the rows in the database, the time the
server took to exit, what is left of its connections on the server, and its log.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_asyncdb.drain import SHUTTING_DOWN
from tests.conftest import prepare_server

from .drain_app import BACKGROUND_KEY_PREFIX, Base, Write
from .served import (
    Load,
    Outcome,
    Served,
    connections_left,
    gunicorn_command,
    server_environment,
    serving,
    uvicorn_command,
)

pytestmark = [pytest.mark.usefixtures("clean_environment")]

FACTORY = "tests.fastapi_asyncdb.drain_app:create_app"
HOLD = 1.0  # each request's transaction
BACKGROUND_HOLD = 0.3  # each background unit's transaction, shorter than the drain timeout
DRAIN_TIMEOUT = 2.0
HEALTH_TIMEOUT = 1.0
CLIENTS = 6
# Scheduling on a loaded machine, interpreter exit, uvicorn's supervisor polling.
SLACK = 3.0
SETTINGS = {
    "DB_POOL_SIZE": 4,
    "DB_MAX_OVERFLOW": 4,
    "DB_READ_POOL_SIZE": 1,
    "DB_READ_MAX_OVERFLOW": 1,
    "DB_DRAIN_TIMEOUT": DRAIN_TIMEOUT,
    "DB_HEALTH_TIMEOUT": HEALTH_TIMEOUT,
}

SERVERS: dict[str, tuple[int, Callable[[int], Sequence[str]]]] = {
    "uvicorn": (1, lambda port: uvicorn_command(FACTORY, port)),
    "uvicorn --workers 2": (2, lambda port: uvicorn_command(FACTORY, port, workers=2)),
    "gunicorn -k UvicornWorker -w 2": (
        2,
        lambda port: gunicorn_command(FACTORY, port, workers=2, graceful_timeout=30),
    ),
}


@pytest.fixture
def server_url() -> str:
    # Outside the test's event loop: prepare_server runs one of its own.
    return prepare_server("postgresql", "drain_servers")


@pytest.fixture
async def database_url(server_url: str) -> str:
    url = server_url
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.drop_all)
            await connection.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()
    return url


async def stored_keys(url: str) -> set[str]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return set((await connection.execute(select(Write.key))).scalars())
    finally:
        await engine.dispose()


def write(hold: float) -> Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]:
    def send(client: httpx.AsyncClient, key: str) -> Awaitable[httpx.Response]:
        return client.post(f"/writes/{key}", params={"hold": hold})

    return send


async def shut_down_mid_load(
    served: Served, *, hold: float, before: float, after: float
) -> tuple[list[Outcome], float]:
    load = Load(served.base_url, write(hold), CLIENTS)
    load.start()
    await asyncio.sleep(before)
    signalled_at = served.terminate()
    await asyncio.sleep(after)
    return await load.stop(), signalled_at


def exited_cleanly(code: int, log: str, workers: int) -> bool:
    """Every worker ran its lifespan's shutdown to the end; then the server exited.

    uvicorn ends by raising the signal it caught again, so it dies of its SIGTERM
    after a clean shutdown; gunicorn's master exits with 0.
    """
    return code in (0, -signal.SIGTERM) and log.count("Application shutdown complete") == workers


def turned_away(outcome: Outcome) -> bool:
    """The server would not take this request: refused, dropped unanswered, or 503."""
    return outcome.failure in ("refused", "dropped") or outcome.status == 503


@pytest.mark.parametrize("server", list(SERVERS))
async def test_sigterm_mid_load_lets_started_requests_finish_and_turns_the_rest_away(
    server: str, database_url: str, tmp_path: Path
) -> None:
    workers, command = SERVERS[server]
    application_name = f"drain-{uuid.uuid4().hex[:12]}"
    environment = server_environment(
        database_url,
        **SETTINGS,
        DB_APPLICATION_NAME=application_name,
        DRAIN_APP_BACKGROUND_HOLD=BACKGROUND_HOLD,
    )
    with serving(command, environment, tmp_path / "server.log") as served:
        outcomes, signalled_at = await shut_down_mid_load(
            served, hold=HOLD, before=2 * HOLD, after=1.5 * HOLD
        )
        code, took = await served.exited(within=60)
        log = served.log()

    before = [o for o in outcomes if o.sent_at < signalled_at]
    after = [o for o in outcomes if o.sent_at >= signalled_at]
    started = {line.split()[-2] for line in log.splitlines() if line.endswith(" started")}
    in_flight = [o for o in before if o.ended_at > signalled_at and o.key in started]
    assert in_flight, "no request was in flight at the signal"
    # Every request the server started got the normal answer, those in flight at the
    # signal included: none was cut.
    assert [o for o in outcomes if o.key in started and o.status != 201] == []
    # Sent before the signal: answered, or (on a busy machine, sent a moment before it
    # and not yet read by the server) turned away unstarted.
    assert [o for o in before if not (o.status == 201 or turned_away(o))] == []
    # After it: turned away, or served only until the server was seen to turn one away.
    assert [o for o in after if not (o.status == 201 or turned_away(o))] == []
    assert all(o.retry_after for o in after if o.status == 503)
    first_turned_away = min(o.ended_at for o in after if turned_away(o))
    # One process: once it turned a request away, it serves no new one. Several: each
    # worker gets the signal from the parent on its own clock, so one may still serve
    # while another already turns away; but each has seen it within the slack.
    served_until = first_turned_away if workers == 1 else signalled_at + SLACK
    assert [o for o in after if o.status == 201 and o.sent_at > served_until] == []
    # Every 2xx's write is there; nothing else is.
    stored = await stored_keys(database_url)
    requests = {key for key in stored if not key.startswith(BACKGROUND_KEY_PREFIX)}
    assert requests == {o.key for o in outcomes if o.status == 201}

    assert exited_cleanly(code, log, workers), log
    assert took <= HOLD + DRAIN_TIMEOUT + HEALTH_TIMEOUT + SLACK, log
    assert await connections_left(database_url, application_name) == []
    # Each worker's background task met the drain: its unit ended, the next was refused.
    refusals = [line for line in log.splitlines() if f"refused: {SHUTTING_DOWN}" in line]
    assert len({line.split()[0] for line in refusals}) == workers, log
    committed = {line.split()[-2] for line in log.splitlines() if line.endswith(" committed")}
    background = {key for key in stored if key.startswith(BACKGROUND_KEY_PREFIX)}
    assert background == committed
    for trouble in ("Traceback", "cancelled", "non-checked-in", "still open at shutdown"):
        assert trouble not in log, log


GRACEFUL_TIMEOUT = 1  # uvicorn's, in seconds: far shorter than the requests take
CUT_SERVERS: dict[str, Callable[[int], Sequence[str]]] = {
    "uvicorn": lambda port: uvicorn_command(FACTORY, port, graceful_timeout=GRACEFUL_TIMEOUT),
    "gunicorn -k BoundedUvicornWorker": lambda port: gunicorn_command(
        FACTORY,
        port,
        workers=1,
        graceful_timeout=30,
        worker_class="tests.fastapi_asyncdb.gunicorn_worker.BoundedUvicornWorker",
    ),
}


@pytest.mark.parametrize("server", list(CUT_SERVERS))
async def test_units_past_uvicorns_graceful_timeout_or_the_drain_timeout_roll_back(
    server: str, database_url: str, tmp_path: Path
) -> None:
    hold, drain_timeout = 20.0, 1.0
    application_name = f"drain-{uuid.uuid4().hex[:12]}"
    environment = server_environment(
        database_url,
        **{**SETTINGS, "DB_DRAIN_TIMEOUT": drain_timeout},
        DB_APPLICATION_NAME=application_name,
        # Longer than the drain waits: the drain cancels it.
        DRAIN_APP_BACKGROUND_HOLD=hold,
        UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=GRACEFUL_TIMEOUT,
    )
    with serving(CUT_SERVERS[server], environment, tmp_path / "server.log") as served:
        outcomes, signalled_at = await shut_down_mid_load(served, hold=hold, before=1, after=1)
        code, took = await served.exited(within=60)
        log = served.log()

    before = [o for o in outcomes if o.sent_at < signalled_at]
    assert before
    # uvicorn cancelled them at its graceful timeout and answered 500 itself.
    assert {(o.status, o.body) for o in before} == {(500, "Internal Server Error")}
    assert all(turned_away(o) for o in outcomes if o.sent_at >= signalled_at)
    # Neither those requests nor the background unit the drain cancelled left a write.
    assert await stored_keys(database_url) == set()
    assert exited_cleanly(code, log, workers=1), log
    assert took <= GRACEFUL_TIMEOUT + drain_timeout + HEALTH_TIMEOUT + SLACK, log
    assert took < hold
    assert await connections_left(database_url, application_name) == []
    assert "timeout graceful shutdown exceeded" in log
    assert "cancelling 1 unit(s) of work still running after the drain timeout" in log
    assert "background unit" in log
    assert "cancelled" in log
    assert "drained: the cancelled units of work rolled back" in log
    assert "non-checked-in" not in log
