"""The private PostgreSQL clusters are real and configured as their fixtures say."""

from __future__ import annotations

import asyncpg
import pytest

from .certificates import client_context
from .postgresql import CERT_USER, PASSWORD_USER, PostgresCluster

_SSL_OF_THIS_SESSION = (
    "SELECT ssl, version, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
)


async def _ssl_row(dsn: str, **connect: object) -> asyncpg.Record:
    connection = await asyncpg.connect(dsn, **connect)
    try:
        return await connection.fetchrow(_SSL_OF_THIS_SESSION)
    finally:
        await connection.close()


async def test_tls_cluster_encrypts_a_verified_connection(postgresql_tls: PostgresCluster) -> None:
    assert postgresql_tls.certificates is not None
    row = await _ssl_row(postgresql_tls.dsn(), ssl=client_context(postgresql_tls.certificates))
    assert row["ssl"] is True
    assert row["version"].startswith("TLSv1.")


async def test_tls_cluster_refuses_plaintext(postgresql_tls: PostgresCluster) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(postgresql_tls.dsn(), ssl=False)


async def test_client_certificate_authenticates_its_user(postgresql_tls: PostgresCluster) -> None:
    certificates = postgresql_tls.certificates
    assert certificates is not None
    context = client_context(certificates, client_certificate=True)
    row = await _ssl_row(postgresql_tls.dsn(user=CERT_USER), ssl=context)
    assert row["client_dn"] == f"/CN={CERT_USER}"


async def test_certificate_user_without_a_certificate_is_refused(
    postgresql_tls: PostgresCluster,
) -> None:
    assert postgresql_tls.certificates is not None
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="certificate"):
        await asyncpg.connect(
            postgresql_tls.dsn(user=CERT_USER), ssl=client_context(postgresql_tls.certificates)
        )


async def test_rotated_password_replaces_the_old_one(postgresql_tls: PostgresCluster) -> None:
    assert postgresql_tls.certificates is not None
    dsn = postgresql_tls.dsn(user=PASSWORD_USER)
    context = client_context(postgresql_tls.certificates)
    old = postgresql_tls.password
    assert (await _ssl_row(dsn, password=old, ssl=context))["ssl"] is True
    new = postgresql_tls.rotate_password()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(dsn, password=old, ssl=context)
    assert (await _ssl_row(dsn, password=new, ssl=context))["ssl"] is True


async def test_plaintext_cluster_offers_no_tls(
    postgresql_plaintext: PostgresCluster, postgresql_tls: PostgresCluster
) -> None:
    assert postgresql_tls.certificates is not None
    assert postgresql_plaintext.psql("SHOW ssl") == "off"
    assert (await _ssl_row(postgresql_plaintext.dsn(), ssl=False))["ssl"] is False
    with pytest.raises(ConnectionError, match="rejected SSL upgrade"):
        await asyncpg.connect(
            postgresql_plaintext.dsn(), ssl=client_context(postgresql_tls.certificates)
        )
