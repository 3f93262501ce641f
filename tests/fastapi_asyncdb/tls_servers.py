"""The session's TLS servers (PostgreSQL and MariaDB), seen the same way by the TLS tests.

Both servers refuse plaintext, carry a certificate for ``localhost``/``127.0.0.1`` only
(``127.0.0.2`` reaches them under a name it lacks), and have a ``password_user`` whose
password rotates and a ``cert_user`` who logs in with a client certificate.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from fastapi_asyncdb import Database
from tests.servers.certificates import Certificates
from tests.servers.mariadb import MariaDBServer
from tests.servers.postgresql import CERT_USER, MISMATCHED_HOST, PASSWORD_USER, PostgresCluster

__all__ = [
    "CERT_USER",
    "MISMATCHED_HOST",
    "PASSWORD_USER",
    "TlsServer",
    "both_engines_encrypted",
    "collecting_asyncmy_sockets",
    "encrypted",
]

TLS_BACKENDS = ("postgresql", "mysql")


@dataclass(frozen=True)
class TlsServer:
    backend: str
    server: PostgresCluster | MariaDBServer

    @classmethod
    def of(cls, request: pytest.FixtureRequest, backend: str, *, tls: bool = True) -> TlsServer:
        kind = "postgresql" if backend == "postgresql" else "mariadb"
        fixture = f"{kind}_{'tls' if tls else 'plaintext'}"
        return cls(backend, request.getfixturevalue(fixture))

    @property
    def certificates(self) -> Certificates:
        assert self.server.certificates is not None
        return self.server.certificates

    @property
    def ca(self) -> Path:
        return self.certificates.ca_cert

    @property
    def password(self) -> str:
        return self.server.password

    def rotate_password(self) -> str:
        return self.server.rotate_password()

    def url(
        self, user: str = PASSWORD_USER, *, host: str | None = None, password: str | None = None
    ) -> str:
        """A URL without a password unless given; the database is the server's own."""
        if isinstance(self.server, PostgresCluster):
            url = make_url(self.server.url(user=user, host=host))
        else:
            url = make_url(self.server.url(user, host=host))
        return url.set(password=password).render_as_string(hide_password=False)

    def admin_url(self) -> str:
        """A user who may create tables: postgres (trusted over TLS) or password_user."""
        if isinstance(self.server, PostgresCluster):
            return self.url("postgres")
        return self.url(password=self.password)


@contextlib.contextmanager
def collecting_asyncmy_sockets() -> Iterator[None]:
    """asyncmy 0.2.18 leaves the socket of a failed TLS handshake open: collect it here,
    where it is expected, rather than let its ResourceWarning surface in a later test."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


async def encrypted(connection: AsyncConnection) -> bool:
    """Whether the server says this connection is encrypted."""
    if connection.dialect.name == "postgresql":
        query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        return bool((await connection.execute(text(query))).scalar_one())
    cipher = (await connection.execute(text("SHOW SESSION STATUS LIKE 'Ssl_cipher'"))).one()[1]
    return str(cipher).startswith("TLS")


async def both_engines_encrypted(database: Database) -> bool:
    async with database.transaction() as session:
        primary = await encrypted(await session.connection())
    async with database.read_connection() as connection:
        read = await encrypted(connection)
    return primary and read
