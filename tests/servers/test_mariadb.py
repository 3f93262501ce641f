"""The private MariaDB servers are real and configured as their fixtures say."""

from __future__ import annotations

import gc
import ssl
import warnings
from typing import Any

import asyncmy
from asyncmy.errors import OperationalError

from .certificates import client_context
from .mariadb import MariaDBServer
from .postgresql import CERT_USER, PASSWORD_USER


async def _cipher(server: MariaDBServer, **connect: Any) -> str:
    connection = await asyncmy.connect(host=server.host, port=server.port, **connect)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            return str((await cursor.fetchone())[1])
    finally:
        await connection.ensure_closed()  # close() would leave the socket to the loop


async def _refusal(server: MariaDBServer, **connect: Any) -> int:
    """The error code of a login the server refuses."""
    try:
        await _cipher(server, **connect)
    except OperationalError as error:
        code = int(error.args[0])
    else:
        raise AssertionError("the login was not refused")
    # asyncmy leaves the socket of a refused login to the garbage collector, which warns
    # of it in whichever test runs then; collect it here, where it is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    return code


def _context(server: MariaDBServer, **options: bool) -> ssl.SSLContext:
    assert server.certificates is not None
    return client_context(server.certificates, **options)


async def test_tls_server_encrypts_a_verified_connection(mariadb_tls: MariaDBServer) -> None:
    cipher = await _cipher(
        mariadb_tls, user=PASSWORD_USER, password=mariadb_tls.password, ssl=_context(mariadb_tls)
    )
    assert cipher.startswith("TLS_")


async def test_tls_server_refuses_plaintext(mariadb_tls: MariaDBServer) -> None:
    assert await _refusal(mariadb_tls, user=PASSWORD_USER, password=mariadb_tls.password) == 1045


async def test_server_requires_secure_transport_of_everyone(mariadb_tls: MariaDBServer) -> None:
    assert mariadb_tls.sql("SELECT @@require_secure_transport, @@have_ssl") == "1\tYES"


async def test_client_certificate_authenticates_its_user(mariadb_tls: MariaDBServer) -> None:
    cipher = await _cipher(
        mariadb_tls, user=CERT_USER, ssl=_context(mariadb_tls, client_certificate=True)
    )
    assert cipher.startswith("TLS_")
    assert await _refusal(mariadb_tls, user=CERT_USER, ssl=_context(mariadb_tls)) == 1045


async def test_rotated_password_replaces_the_old_one(mariadb_tls: MariaDBServer) -> None:
    old = mariadb_tls.password
    new = mariadb_tls.rotate_password()
    refused = await _refusal(
        mariadb_tls, user=PASSWORD_USER, password=old, ssl=_context(mariadb_tls)
    )
    assert refused == 1045
    cipher = await _cipher(mariadb_tls, user=PASSWORD_USER, password=new, ssl=_context(mariadb_tls))
    assert cipher.startswith("TLS_")


async def test_plaintext_server_offers_no_tls(mariadb_plaintext: MariaDBServer) -> None:
    assert mariadb_plaintext.sql("SELECT @@have_ssl") == "DISABLED"
    assert await _cipher(mariadb_plaintext, user="root") == ""
