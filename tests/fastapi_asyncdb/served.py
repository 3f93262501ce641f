"""Real server processes for the shutdown and worker tests: uvicorn and gunicorn, on a free port.

``serving()`` starts a server command in a process group of its own, waits until it
answers, and kills whatever is left of the group when the block ends. The tests
signal the server's main process only, as Kubernetes and Docker do. ``Load`` sends
requests from several clients, each on a fresh connection (so that a request's start
is a connection's start: a refused connection is a request the server never saw),
and records when each was sent and how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.servers.processes import free_port

__all__ = [
    "REPOSITORY",
    "Load",
    "Outcome",
    "Served",
    "answering",
    "connections_left",
    "gunicorn_command",
    "server_environment",
    "serving",
    "uvicorn_command",
]

REPOSITORY = Path(__file__).resolve().parents[2]


def uvicorn_command(
    factory: str, port: int, *, workers: int = 1, graceful_timeout: int | None = None
) -> list[str]:
    command = [sys.executable, "-m", "uvicorn", "--factory", factory]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if graceful_timeout is not None:
        command += ["--timeout-graceful-shutdown", str(graceful_timeout)]
    return command


def gunicorn_command(
    factory: str,
    port: int,
    *,
    workers: int,
    graceful_timeout: int,
    worker_class: str = "uvicorn_worker.UvicornWorker",
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        worker_class,
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        str(graceful_timeout),
        f"{factory}()",
    ]


def server_environment(database_url: str, **settings: object) -> dict[str, str]:
    """This process's environment with none of its database settings, and these instead."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name != "DATABASE_URL" and not name.startswith(("DB_", "LEDGER_"))
    }
    environment["DATABASE_URL"] = database_url
    environment["PYTHONPATH"] = str(REPOSITORY)
    environment.update({name: str(value) for name, value in settings.items()})
    return environment


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    signalled_at: float | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> float:
        """SIGTERM to the main process alone; returns when it was sent."""
        self.signalled_at = time.monotonic()
        os.kill(self.process.pid, signal.SIGTERM)
        return self.signalled_at

    async def exited(self, within: float) -> tuple[int, float]:
        """The exit code and the seconds from the signal to the exit."""
        assert self.signalled_at is not None
        deadline = self.signalled_at + within
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running {within} s after SIGTERM:\n{self.log()}")
            await asyncio.sleep(0.02)
        return self.process.returncode, time.monotonic() - self.signalled_at


@contextlib.contextmanager
def serving(
    command: Callable[[int], Sequence[str]],
    environment: Mapping[str, str],
    log_path: Path,
    *,
    ready: str | None = "/health/live",
    start_timeout: float = 60,
) -> Iterator[Served]:
    """The server, once ``ready`` answers 200 (at once with None: see ``answering``)."""
    port = free_port()
    # The kernel ends the server if the test run dies without cleaning up.
    setpriv = shutil.which("setpriv")
    wrapper = [setpriv, "--pdeathsig=KILL", "--"] if setpriv else []
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*wrapper, *command(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPOSITORY,
            env=dict(environment),
            process_group=0,
        )
    served = Served(process, f"http://127.0.0.1:{port}", log_path)
    try:
        if ready is not None:
            _wait_until_ready(served, ready, start_timeout)
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_until_ready(served: Served, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if served.process.poll() is not None:
            raise AssertionError(f"the server exited at startup:\n{served.log()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(served.base_url + path, timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not answer in {timeout} s:\n{served.log()}")
        time.sleep(0.05)


async def answering(served: Served, path: str = "/health/live", within: float = 60) -> None:
    """Wait on the event loop until the server answers ``path`` with 200."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=served.base_url, timeout=1) as client:
        while True:
            if served.process.poll() is not None:
                raise AssertionError(f"the server exited at startup:\n{served.log()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(path)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer in {within} s:\n{served.log()}")
            await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Outcome:
    """How one request ended: an answer, or what the connection did instead."""

    key: str
    sent_at: float
    ended_at: float
    status: int | None = None
    retry_after: str | None = None
    body: str = ""
    failure: str | None = None  # "refused", "dropped" (no answer), or the exception's type

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Load:
    """Clients sending requests back to back until stopped, each on a fresh connection."""

    base_url: str
    send: Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]
    clients: int
    prefix: str = "request"
    outcomes: list[Outcome] = field(default_factory=list)
    _keys: Iterator[int] = field(default_factory=itertools.count)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.outcomes

    async def _client(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=30) as client:
            while not self._stop.is_set():
                key = f"{self.prefix}-{next(self._keys)}"
                sent_at = time.monotonic()
                try:
                    response = await self.send(client, key)
                except httpx.ConnectError:
                    self._failed(key, sent_at, "refused")
                    await asyncio.sleep(0.02)  # a refused connect returns at once
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    self._failed(key, sent_at, "dropped")
                except httpx.HTTPError as error:
                    self._failed(key, sent_at, type(error).__name__)
                else:
                    self.outcomes.append(
                        Outcome(
                            key,
                            sent_at,
                            time.monotonic(),
                            response.status_code,
                            response.headers.get("retry-after"),
                            response.text,
                        )
                    )

    def _failed(self, key: str, sent_at: float, failure: str) -> None:
        self.outcomes.append(Outcome(key, sent_at, time.monotonic(), failure=failure))


async def connections_left(url: str, application_name: str) -> list[str]:
    """The states of the server's sessions for ``application_name``, once they have settled.

    A backend leaves ``pg_stat_activity`` a moment after its client closes: wait a
    little for that, but report what is there.
    """
    engine = create_async_engine(url, poolclass=NullPool)
    query = text("SELECT coalesce(state, '') FROM pg_stat_activity WHERE application_name = :n")
    try:
        for _ in range(50):
            async with engine.connect() as connection:
                states = list((await connection.execute(query, {"n": application_name})).scalars())
            if not states or "idle in transaction" in states:
                return states
            await asyncio.sleep(0.05)
        return states
    finally:
        await engine.dispose()
