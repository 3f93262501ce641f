"""A TCP forwarder between the Database under test and its server, to cut or slow the wire.

The database itself is never touched: faults happen on the forwarder's side of the
sockets, as a network or a server going away would make them. Each forwarded client
connection is a ``Link``; a link is known by the port its upstream socket uses, which is
the client port the server reports (``inet_client_port()`` on PostgreSQL, the
processlist's host on MariaDB), so a test can keep its own connection out of a fault.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import overload

from sqlalchemy.engine import URL, make_url

__all__ = ["Forwarder"]


class _Link:
    """One client connection and the upstream connection it is forwarded to."""

    __slots__ = ("client", "upstream", "upstream_port")

    def __init__(
        self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter, upstream_port: int
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.upstream_port = upstream_port

    def cut(self) -> None:
        # abort(): a reset, not a polite close; what a server that went away leaves behind.
        self.client.transport.abort()
        self.upstream.transport.abort()


class Forwarder:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port``.

    ``refusing``: new connections are closed as soon as they are accepted (the server
    is down). ``delay``: every chunk from the server waits that long first, so each
    round trip takes at least ``delay`` more. ``cut()`` resets open connections.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.refusing = False
        self.delay = 0.0
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @classmethod
    def for_url(cls, url: URL | str) -> Forwarder:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" or parsed.host is None:
            raise ValueError("only a database reached over TCP can be forwarded")
        default_port = 5432 if parsed.get_backend_name() == "postgresql" else 3306
        return cls(parsed.host, parsed.port or default_port)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the forwarder is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @overload
    def url_through(self, url: URL) -> URL: ...
    @overload
    def url_through(self, url: str) -> str: ...
    def url_through(self, url: URL | str) -> URL | str:
        """``url``, going through this forwarder instead of straight to the server, of the
        same type as given (a string keeps its password: it is the caller's own)."""
        through = make_url(url).set(host="127.0.0.1", port=self.port)
        return through if isinstance(url, URL) else through.render_as_string(hide_password=False)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def cut(self, *, keep: Collection[int] = ()) -> int:
        """Reset every open connection but those whose upstream port is in ``keep``."""
        doomed = [link for link in self._links if link.upstream_port not in keep]
        for link in doomed:
            link.cut()
            self._links.discard(link)
        return len(doomed)

    @property
    def upstream_ports(self) -> set[int]:
        return {link.upstream_port for link in self._links}

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._forward(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        except BaseException:  # stopped while connecting: the client's socket goes too
            await _closed(writer)
            raise
        link = _Link(writer, upstream_writer, upstream_writer.get_extra_info("sockname")[1])
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer, delayed=False),
                self._pipe(upstream_reader, writer, delayed=True),
            )
        finally:
            self._links.discard(link)
            await _closed(writer, upstream_writer)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if delayed and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        # One side ended: end the other, so that neither waits for the other forever.
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


async def _closed(*writers: asyncio.StreamWriter) -> None:
    """Close the sockets and wait until they are: a close only schedules the socket's
    release, and a test's event loop closed before that leaves it to the collector, which
    warns (ResourceWarning) in whatever test it happens to run."""
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(Exception):
            await writer.wait_closed()
