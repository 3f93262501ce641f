"""Research: how asyncpg and asyncmy express verify-full TLS, and what each refusal raises.

The servers are the TLS fixtures; ``127.0.0.2`` reaches the same server under a name its
certificate does not carry, and the plaintext fixtures offer no TLS at all.
"""

from __future__ import annotations

import contextlib
import gc
import ssl
import warnings
from collections.abc import Iterator
from typing import Any

import asyncmy
import asyncpg
import pytest
from asyncmy.errors import OperationalError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from .certificates import Certificates, client_context
from .mariadb import MariaDBServer
from .postgresql import CERT_USER, MISMATCHED_HOST, PASSWORD_USER, PostgresCluster

_PG_SSL = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def _certificates(server: PostgresCluster | MariaDBServer) -> Certificates:
    assert server.certificates is not None
    return server.certificates


async def _pg_encrypted(dsn: str, **connect: Any) -> bool:
    connection = await asyncpg.connect(dsn, **connect)
    try:
        return bool(await connection.fetchval(_PG_SSL))
    finally:
        await connection.close()


def _verify_full_dsn(cluster: PostgresCluster, host: str | None = None) -> str:
    root = _certificates(cluster).ca_cert
    return f"{cluster.dsn(host=host)}?sslmode=verify-full&sslrootcert={root}"


# -- asyncpg ---------------------------------------------------------------------------------


async def test_asyncpg_verify_full_as_a_context_or_in_the_dsn(
    postgresql_tls: PostgresCluster,
) -> None:
    context = client_context(_certificates(postgresql_tls))
    assert await _pg_encrypted(postgresql_tls.dsn(), ssl=context)
    assert await _pg_encrypted(_verify_full_dsn(postgresql_tls))


async def test_asyncpg_verify_full_keyword_reads_the_root_from_the_environment(
    postgresql_tls: PostgresCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt there
    with pytest.raises(asyncpg.ClientConfigurationError, match="root certificate file"):
        await asyncpg.connect(postgresql_tls.dsn(), ssl="verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", str(_certificates(postgresql_tls).ca_cert))
    assert await _pg_encrypted(postgresql_tls.dsn(), ssl="verify-full")


async def test_asyncpg_refuses_a_host_name_the_certificate_does_not_carry(
    postgresql_tls: PostgresCluster,
) -> None:
    context = client_context(_certificates(postgresql_tls))
    for attempt in (
        asyncpg.connect(postgresql_tls.dsn(host=MISMATCHED_HOST), ssl=context),
        asyncpg.connect(_verify_full_dsn(postgresql_tls, host=MISMATCHED_HOST)),
    ):
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            await attempt


async def test_asyncpg_refuses_a_server_certificate_from_an_untrusted_ca(
    postgresql_tls: PostgresCluster,
) -> None:
    context = client_context(_certificates(postgresql_tls), trust_untrusted_ca=True)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await asyncpg.connect(postgresql_tls.dsn(), ssl=context)


@pytest.mark.parametrize("mode", ["context", "require", "verify-full dsn"])
async def test_asyncpg_refuses_a_plaintext_only_server_when_tls_is_asked_for(
    postgresql_plaintext: PostgresCluster, postgresql_tls: PostgresCluster, mode: str
) -> None:
    dsn = postgresql_plaintext.dsn()
    connect: dict[str, Any] = {}
    if mode == "context":
        connect = {"ssl": client_context(_certificates(postgresql_tls))}
    elif mode == "require":
        connect = {"ssl": "require"}
    else:
        dsn += f"?sslmode=verify-full&sslrootcert={_certificates(postgresql_tls).ca_cert}"
    with pytest.raises(ConnectionError, match="rejected SSL upgrade"):
        await asyncpg.connect(dsn, **connect)


@pytest.mark.parametrize("ssl_mode", [None, "prefer"], ids=["default", "prefer"])
async def test_asyncpg_prefer_falls_back_to_plaintext_and_verifies_nothing(
    postgresql_plaintext: PostgresCluster,
    postgresql_tls: PostgresCluster,
    monkeypatch: pytest.MonkeyPatch,
    ssl_mode: str | None,
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    connect = {} if ssl_mode is None else {"ssl": ssl_mode}
    # No TLS offered: plaintext, without a word.
    assert await _pg_encrypted(postgresql_plaintext.dsn(), **connect) is False
    # TLS from a CA nobody trusts, under a name the certificate lacks: accepted.
    assert await _pg_encrypted(postgresql_tls.dsn(host=MISMATCHED_HOST), **connect) is True


async def test_asyncpg_client_certificate_is_required_and_checked(
    postgresql_tls: PostgresCluster,
) -> None:
    certificates = _certificates(postgresql_tls)
    dsn = postgresql_tls.dsn(user=CERT_USER)
    assert await _pg_encrypted(dsn, ssl=client_context(certificates, client_certificate=True))
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="valid client cert"):
        await asyncpg.connect(dsn, ssl=client_context(certificates))
    # The server ends the handshake; asyncpg reports a lost connection, caused by the
    # TLS alert (unknown ca) or by the reset, whichever the client reads first.
    with pytest.raises(asyncpg.ConnectionDoesNotExistError) as refused:
        await asyncpg.connect(
            dsn, ssl=client_context(certificates, untrusted_client_certificate=True)
        )
    assert isinstance(refused.value.__cause__, ssl.SSLError | ConnectionResetError)


async def test_sqlalchemy_asyncpg_takes_the_context_as_a_connect_argument(
    postgresql_tls: PostgresCluster,
) -> None:
    context = client_context(_certificates(postgresql_tls))
    engine = create_async_engine(
        postgresql_tls.url(user=PASSWORD_USER),
        connect_args={"ssl": context, "password": postgresql_tls.password},
    )
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text(_PG_SSL))).scalar() is True
    finally:
        await engine.dispose()


# -- asyncmy ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _asyncmy_refusal() -> Iterator[None]:
    """Where asyncmy's TLS handshake fails it leaves the socket open (asyncmy 0.2.18):
    collect it here, so that its ResourceWarning does not surface in a later test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        yield
        gc.collect()


async def _my_cipher(server: MariaDBServer, host: str | None = None, **connect: Any) -> str:
    connection = await asyncmy.connect(
        host=host or server.host, port=server.port, connect_timeout=5, **connect
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            return str((await cursor.fetchone())[1])
    finally:
        await connection.ensure_closed()  # close() would leave the socket to the loop


def _password_login(server: MariaDBServer) -> dict[str, Any]:
    return {"user": PASSWORD_USER, "password": server.password}


@pytest.mark.parametrize("form", ["context", "dict"])
async def test_asyncmy_verifies_certificate_and_host_name(
    mariadb_tls: MariaDBServer, form: str
) -> None:
    certificates = _certificates(mariadb_tls)
    tls: ssl.SSLContext | dict[str, str] = (
        client_context(certificates) if form == "context" else {"ca": str(certificates.ca_cert)}
    )
    assert (await _my_cipher(mariadb_tls, ssl=tls, **_password_login(mariadb_tls))).startswith(
        "TLS"
    )
    with _asyncmy_refusal(), pytest.raises(OperationalError) as mismatch:
        await _my_cipher(mariadb_tls, MISMATCHED_HOST, ssl=tls, **_password_login(mariadb_tls))
    assert mismatch.value.args[0] == 2003
    assert isinstance(mismatch.value.__cause__, ssl.SSLCertVerificationError)
    assert "IP address mismatch" in str(mismatch.value)


async def test_asyncmy_refuses_a_server_certificate_from_an_untrusted_ca(
    mariadb_tls: MariaDBServer,
) -> None:
    tls = client_context(_certificates(mariadb_tls), trust_untrusted_ca=True)
    with _asyncmy_refusal(), pytest.raises(OperationalError) as refused:
        await _my_cipher(mariadb_tls, ssl=tls, **_password_login(mariadb_tls))
    assert refused.value.args[0] == 2003
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)


@pytest.mark.parametrize(
    "tls",
    [True, {"cert": "client"}],
    ids=["ssl=True", "dict without ca"],
)
async def test_asyncmy_without_a_ca_encrypts_but_verifies_nothing(
    mariadb_tls: MariaDBServer, tls: bool | dict[str, str]
) -> None:
    if isinstance(tls, dict):
        certificates = _certificates(mariadb_tls)
        tls = {"cert": str(certificates.client_cert), "key": str(certificates.client_key)}
    # An untrusted certificate, under a name it lacks: accepted.
    cipher = await _my_cipher(mariadb_tls, MISMATCHED_HOST, ssl=tls, **_password_login(mariadb_tls))
    assert cipher.startswith("TLS")


async def test_asyncmy_does_not_fall_back_to_plaintext(
    mariadb_plaintext: MariaDBServer, mariadb_tls: MariaDBServer
) -> None:
    # asyncmy 0.2.18 asks for TLS whatever the server offers; the handshake then fails.
    with _asyncmy_refusal(), pytest.raises(OperationalError) as refused:
        await _my_cipher(
            mariadb_plaintext, user="root", ssl=client_context(_certificates(mariadb_tls))
        )
    assert refused.value.args[0] == 2003
    assert isinstance(refused.value.__cause__, ssl.SSLError)


async def test_asyncmy_client_certificate_is_required_and_checked(
    mariadb_tls: MariaDBServer,
) -> None:
    certificates = _certificates(mariadb_tls)
    good = client_context(certificates, client_certificate=True)
    assert (await _my_cipher(mariadb_tls, user=CERT_USER, ssl=good)).startswith("TLS")
    with pytest.raises(OperationalError) as missing:
        await _my_cipher(mariadb_tls, user=CERT_USER, ssl=client_context(certificates))
    assert missing.value.args[0] == 1045
    foreign = client_context(certificates, untrusted_client_certificate=True)
    with _asyncmy_refusal(), pytest.raises(OperationalError) as unknown:
        await _my_cipher(mariadb_tls, user=CERT_USER, ssl=foreign)
    # "tlsv1 alert unknown ca", or the reset that follows it.
    assert unknown.value.args[0] == 2013


async def test_sqlalchemy_asyncmy_takes_the_context_as_a_connect_argument(
    mariadb_tls: MariaDBServer,
) -> None:
    engine = create_async_engine(
        mariadb_tls.url(PASSWORD_USER),
        connect_args={
            "ssl": client_context(_certificates(mariadb_tls)),
            "password": mariadb_tls.password,
        },
    )
    try:
        async with engine.connect() as connection:
            result = await connection.execute(text("SHOW SESSION STATUS LIKE 'Ssl_cipher'"))
            assert str(result.one()[1]).startswith("TLS")
    finally:
        await engine.dispose()
