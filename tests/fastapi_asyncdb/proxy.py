"""A TCP forwarder in front of the test database that can go silent, like a cut cable."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from sqlalchemy.engine import make_url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Forwarder:
    """Forwards 127.0.0.1:port to the database; ``blackhole`` drops every byte both ways."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = free_port() if port is None else port
        self._passing = asyncio.Event()
        self._passing.set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if self._passing.is_set():
                    writer.write(data)
                    await writer.drain()
        await _closed(writer)

    @property
    def blackhole(self) -> bool:
        return not self._passing.is_set()

    @blackhole.setter
    def blackhole(self, silent: bool) -> None:
        if silent:
            self._passing.clear()
        else:
            self._passing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer = None
        try:
            # While silent, accept and say nothing: a connect that never completes.
            await self._passing.wait()
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            await _closed(writer, *([upstream_writer] if upstream_writer is not None else []))

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Forwarder]:
        server = await asyncio.start_server(self._track, "127.0.0.1", self.port)
        try:
            yield self
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _closed(*writers: asyncio.StreamWriter) -> None:
    # A close only schedules the socket's release: waited for, so that a test's loop
    # closing right after leaves no socket to the collector (a ResourceWarning later).
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def forwarder_for(database_url: str) -> tuple[Forwarder, str]:
    """A forwarder to the server of ``database_url``, and the URL that goes through it."""
    url = make_url(database_url)
    forwarder = Forwarder(url.port or 5432)
    return forwarder, url.set(port=forwarder.port).render_as_string(hide_password=False)
