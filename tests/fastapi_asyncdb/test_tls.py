"""TLS that verifies: the settings, checked at startup, and real servers that refuse or accept.

The servers are the session's TLS-only PostgreSQL and MariaDB (``tls_servers``), and
their plaintext-only twins; ``127.0.0.2`` reaches a TLS server under a name its
certificate lacks.
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, text
from sqlalchemy.engine import make_url

from fastapi_asyncdb import (
    ConfigurationError,
    Database,
    DatabaseSettings,
    DatabaseUnavailableError,
    Prepared,
)
from fastapi_asyncdb.doctor import examine
from fastapi_asyncdb.tls import connect_context
from tests.servers.certificates import Certificates, generate_certificates

from .tls_servers import (
    CERT_USER,
    MISMATCHED_HOST,
    TLS_BACKENDS,
    TlsServer,
    both_engines_encrypted,
    collecting_asyncmy_sockets,
    encrypted,
)

pytestmark = pytest.mark.usefixtures("clean_environment")

KEY_PASSWORD = "k3y-Pa55word"


@pytest.fixture(params=TLS_BACKENDS)
def tls_server(request: pytest.FixtureRequest) -> TlsServer:
    return TlsServer.of(request, str(request.param))


@pytest.fixture(params=TLS_BACKENDS)
def plaintext_server(request: pytest.FixtureRequest) -> tuple[TlsServer, TlsServer]:
    """A server without TLS, and the TLS server of the same kind (for its CA)."""
    backend = str(request.param)
    return TlsServer.of(request, backend, tls=False), TlsServer.of(request, backend)


async def refusal(database: Database) -> str:
    """Start, try a unit of work, stop: the ``DatabaseUnavailableError``'s message."""
    with collecting_asyncmy_sockets():
        async with database:
            with pytest.raises(DatabaseUnavailableError) as refused:
                async with database.transaction() as session:
                    await session.execute(text("SELECT 1"))
        message = str(refused.value)
        del refused
    return message


async def connects_encrypted(database: Database) -> bool:
    async with database:
        return await both_engines_encrypted(database)


# -- the whole stack over verify-full ---------------------------------------------------

notes = Table(
    "tls_notes",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("body", String(50)),
)
NOTE_BY_ID = Prepared(select(notes.c.body).where(notes.c.id == bindparam("id")))


@pytest.fixture
async def verified_database(tls_server: TlsServer) -> AsyncIterator[Database]:
    url = tls_server.admin_url()
    if tls_server.backend == "mysql":
        setup = Database(url=url, tls="verify-full", tls_ca_file=tls_server.ca)
        async with setup, setup.engine.begin() as connection:
            await connection.execute(text("CREATE DATABASE IF NOT EXISTS tls_stack"))
        url = make_url(url).set(database="tls_stack").render_as_string(hide_password=False)
    async with Database(url=url, tls="verify-full", tls_ca_file=tls_server.ca) as database:
        async with database.engine.begin() as connection:
            await connection.run_sync(notes.metadata.drop_all)
            await connection.run_sync(notes.metadata.create_all)
        yield database
        async with database.engine.begin() as connection:
            await connection.run_sync(notes.metadata.drop_all)


async def test_verify_full_encrypts_units_of_work_reads_and_prepared_statements(
    verified_database: Database,
) -> None:
    database = verified_database
    async with database.transaction() as session:
        await session.execute(insert(notes).values(id=1, body="written in a unit of work"))
        assert await encrypted(await session.connection())
    await database.run_statement(insert(notes), [{"id": 2, "body": "run_statement"}])
    async with database.read_session() as session:
        assert (await session.execute(select(notes.c.body).where(notes.c.id == 1))).scalar_one()
    async with database.read_connection() as connection:
        assert await encrypted(connection)
        # Twice: the first run goes through SQLAlchemy, the next one (on PostgreSQL)
        # straight to asyncpg on the same verified connection.
        for _ in range(2):
            assert (await NOTE_BY_ID.one(connection, {"id": 2})).body == "run_statement"
    assert (await database.check_health())["status"] == "ok"


# -- refusals, each saying why ------------------------------------------------------------


async def test_a_host_name_the_certificate_lacks_is_refused_saying_so(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = tls_server.url(host=MISMATCHED_HOST, password=tls_server.password)
    message = await refusal(Database(url=url, tls="verify-full", tls_ca_file=tls_server.ca))
    assert f"at {MISMATCHED_HOST}:" in message
    assert "certificate is refused: IP address mismatch" in message
    assert "must name the host" in message
    assert tls_server.password not in message
    assert tls_server.password not in caplog.text


@pytest.mark.parametrize("trust", ["untrusted CA", "system trust store"])
async def test_a_certificate_from_a_ca_not_trusted_here_is_refused(
    tls_server: TlsServer, trust: str
) -> None:
    ca = tls_server.certificates.untrusted_ca_cert if trust == "untrusted CA" else None
    url = tls_server.url(password=tls_server.password)
    message = await refusal(Database(url=url, tls="verify-full", tls_ca_file=ca))
    assert "certificate is refused: self-signed certificate in certificate chain" in message
    assert "no CA trusted here signed it" in message


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
async def test_a_server_without_tls_is_refused_whatever_the_mode(
    plaintext_server: tuple[TlsServer, TlsServer], mode: str
) -> None:
    plaintext, tls_server = plaintext_server
    user = "postgres" if plaintext.backend == "postgresql" else "root"
    ca = None if mode == "require" else tls_server.ca
    message = await refusal(Database(url=plaintext.url(user), tls=mode, tls_ca_file=ca))
    assert (
        "the server does not offer TLS" in message
        if plaintext.backend == "postgresql"
        else "the server does not speak TLS there" in message
    )


async def test_verify_ca_accepts_any_host_name_but_only_the_trusted_ca(
    tls_server: TlsServer,
) -> None:
    url = tls_server.url(host=MISMATCHED_HOST, password=tls_server.password)
    assert await connects_encrypted(Database(url=url, tls="verify-ca", tls_ca_file=tls_server.ca))
    untrusted = tls_server.certificates.untrusted_ca_cert
    message = await refusal(Database(url=url, tls="verify-ca", tls_ca_file=untrusted))
    assert "self-signed certificate in certificate chain" in message


async def test_require_encrypts_but_accepts_any_certificate_under_any_name(
    tls_server: TlsServer,
) -> None:
    # What require means, and why the docs and the doctor warn about it.
    url = tls_server.url(host=MISMATCHED_HOST, password=tls_server.password)
    assert await connects_encrypted(Database(url=url, tls="require"))


async def test_without_tls_settings_no_tls_is_attempted(
    plaintext_server: tuple[TlsServer, TlsServer],
) -> None:
    plaintext, tls_server = plaintext_server
    # asyncpg's own default (prefer) would have connected here, encrypted and unverified.
    if tls_server.backend == "postgresql":
        message = await refusal(Database(url=tls_server.url("postgres")))
        assert "no encryption (the server requires TLS: set DB_TLS" in message
    else:
        message = await refusal(Database(url=tls_server.url(password=tls_server.password)))
        assert "Access denied" in message
    user = "postgres" if plaintext.backend == "postgresql" else "root"
    async with Database(url=plaintext.url(user)) as database, database.read_connection() as c:
        assert not await encrypted(c)


# -- client certificates ------------------------------------------------------------------


def encrypted_key(certificates: Certificates, directory: Path) -> Path:
    key = serialization.load_pem_private_key(certificates.client_key.read_bytes(), None)
    path = directory / "client-encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    return path


async def test_a_client_certificate_logs_in_the_user_it_names(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    certificates = tls_server.certificates
    url = tls_server.url(CERT_USER)
    plain = Database(
        url=url,
        tls="verify-full",
        tls_ca_file=tls_server.ca,
        tls_cert_file=certificates.client_cert,
        tls_key_file=certificates.client_key,
    )
    assert await connects_encrypted(plain)
    protected = Database(
        url=url,
        tls="verify-full",
        tls_ca_file=tls_server.ca,
        tls_cert_file=certificates.client_cert,
        tls_key_file=encrypted_key(certificates, tmp_path),
        tls_key_password=KEY_PASSWORD,
    )
    assert KEY_PASSWORD not in repr(protected.settings)
    assert await connects_encrypted(protected)
    message = await refusal(Database(url=url, tls="verify-full", tls_ca_file=tls_server.ca))
    assert (
        "requires a valid client certificate" in message
        if tls_server.backend == "postgresql"
        else f"Access denied for user '{CERT_USER}'" in message
    )


# -- the URL's own TLS parameters -----------------------------------------------------------


async def test_url_tls_parameters_verify_as_the_settings_do(tls_server: TlsServer) -> None:
    ca = tls_server.ca
    query = (
        {"sslmode": "verify-full", "sslrootcert": str(ca)}
        if tls_server.backend == "postgresql"
        else {"ssl_ca": str(ca)}
    )

    def url(host: str | None = None) -> str:
        base = make_url(tls_server.url(host=host, password=tls_server.password))
        return base.update_query_dict(query).render_as_string(hide_password=False)

    assert await connects_encrypted(Database(url=url()))
    assert "IP address mismatch" in await refusal(Database(url=url(MISMATCHED_HOST)))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u@db/app?sslmode=prefer",
        "postgresql+asyncpg://u@db/app?ssl=allow",
        "postgresql+asyncpg://u@db/app?sslmode=PREFER",
        "mysql+asyncmy://u@db/app?ssl_mode=PREFERRED",
    ],
)
def test_url_modes_that_fall_back_to_plaintext_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="falls back to plaintext"):
        DatabaseSettings(url=url)


@pytest.mark.parametrize(
    ("url", "settings", "complaint"),
    [
        ("postgresql+asyncpg://u@db/app?sslmode=require", {"tls": "verify-full"}, "one place"),
        ("postgresql+asyncpg://u@db/app?sslmode=require", {"tls": "disable"}, "one place"),
        ("mysql+asyncmy://u@db/app?ssl_mode=REQUIRED", {"tls": "require"}, "one place"),
        ("postgresql+asyncpg://u@db/app?sslrootcert=ca.crt", {}, "without a TLS mode"),
        ("mysql+asyncmy://u@db/app?ssl_cert=c.crt&ssl_key=c.key", {}, "without a TLS mode"),
        ("postgresql+asyncpg://u@db/app?sslcrl=crl.pem", {}, "sslcrl is not supported"),
        ("mysql+asyncmy://u@db/app?ssl_cipher=AES", {}, "ssl_cipher is not supported"),
        ("postgresql+asyncpg://u@db/app?sslmode=true", {}, "true is not a TLS mode"),
        ("postgresql+asyncpg://u@db/app?sslmode=require&ssl=disable", {}, "asked for twice"),
        ("mysql+asyncmy://u@db/app?ssl_mode=REQUIRED&ssl_check_hostname=false", {}, "already"),
    ],
)
def test_url_tls_parameters_that_contradict_or_are_unclear_are_refused(
    url: str, settings: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        DatabaseSettings(url=url, **settings)


# -- settings checked at startup ------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return generate_certificates(tmp_path_factory.mktemp("tls"), client_user="app")


@pytest.fixture(scope="module")
def files(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("files")
    junk = directory / "junk.pem"
    junk.write_text("not a certificate\n")
    return {
        "ca": certificates.ca_cert,
        "cert": certificates.client_cert,
        "key": certificates.client_key,
        "encrypted key": encrypted_key(certificates, directory),
        "other key": certificates.server_key,
        "junk": junk,
        "missing": directory / "missing.pem",
    }


MODES = [None, "disable", "require", "verify-ca", "verify-full"]
CAS = [None, "ca", "junk", "missing"]
CERTS = [None, "cert", "junk", "missing"]
KEYS = [None, "key", "encrypted key", "other key", "missing"]
PASSWORDS = [None, KEY_PASSWORD, "wrong-password"]


def valid(
    mode: str | None, ca: str | None, cert: str | None, key: str | None, pw: str | None
) -> bool:
    """What can work: TLS on for any file; a CA only to verify; a key that opens and fits."""
    if mode in (None, "disable"):
        return (ca, cert, key, pw) == (None, None, None, None)
    if ca not in (None, "ca") or (mode == "require" and ca is not None):
        return False
    if cert is None:
        return key is None and pw is None
    return cert == "cert" and (key == "key" or (key == "encrypted key" and pw == KEY_PASSWORD))


def test_tls_settings_are_accepted_exactly_when_they_can_work(files: dict[str, Path]) -> None:
    # Every combination: a few thousand milliseconds, and no case left to chance.
    accepted = set()
    for mode, ca, cert, key, pw in itertools.product(MODES, CAS, CERTS, KEYS, PASSWORDS):
        values = {
            "url": "postgresql+asyncpg://app@db.internal/app",
            "tls": mode,
            "tls_ca_file": None if ca is None else files[ca],
            "tls_cert_file": None if cert is None else files[cert],
            "tls_key_file": None if key is None else files[key],
            "tls_key_password": pw,
        }
        if not valid(mode, ca, cert, key, pw):
            with pytest.raises(ConfigurationError) as refused:
                DatabaseSettings(**values)
            message = str(refused.value)
            assert "DB_TLS" in message
            assert KEY_PASSWORD not in message
            continue
        accepted.add(mode)
        context = connect_context(DatabaseSettings(**values))
        if mode in (None, "disable"):
            assert context is None
            continue
        assert context is not None
        assert context.check_hostname is (mode == "verify-full")
        assert context.verify_mode == (ssl.CERT_NONE if mode == "require" else ssl.CERT_REQUIRED)
    assert accepted == set(MODES)


# libpq's names on PostgreSQL, MySQL's on MySQL/MariaDB.
URL_NAMES = {
    "postgresql": ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"),
    "mysql": ("ssl_mode", "ssl_ca", "ssl_cert", "ssl_key", None),
}
MYSQL_MODES = {
    "disable": "DISABLED",
    "require": "REQUIRED",
    "verify-ca": "VERIFY_CA",
    "verify-full": "VERIFY_IDENTITY",
}


COMBINATIONS = list(itertools.product(MODES[1:], CAS, CERTS, KEYS, PASSWORDS))
# Half the draws among those that can work, or most would only show refusals.
WORKABLE = [combination for combination in COMBINATIONS if valid(*combination)]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    backend=st.sampled_from(["postgresql", "mysql"]),
    combination=st.one_of(st.sampled_from(WORKABLE), st.sampled_from(COMBINATIONS)),
)
def test_url_tls_parameters_mean_what_the_settings_mean(
    files: dict[str, Path],
    backend: str,
    combination: tuple[str, str | None, str | None, str | None, str | None],
) -> None:
    mode, ca, cert, key, pw = combination
    if backend == "mysql":
        pw = None  # MySQL's URL has no key password
    names = URL_NAMES[backend]
    given_values = (
        MYSQL_MODES[mode] if backend == "mysql" else mode,
        *(None if name is None else str(files[name]) for name in (ca, cert, key)),
        pw,
    )
    query = {
        name: value
        for name, value in zip(names, given_values, strict=True)
        if name is not None and value is not None
    }
    base = (
        "postgresql+asyncpg://app@db/app" if backend == "postgresql" else "mysql+asyncmy://a@db/a"
    )
    from_url = make_url(base).update_query_dict(query).render_as_string(hide_password=False)
    from_settings = {
        "url": base,
        "tls": mode,
        "tls_ca_file": None if ca is None else files[ca],
        "tls_cert_file": None if cert is None else files[cert],
        "tls_key_file": None if key is None else files[key],
        "tls_key_password": pw,
    }
    outcomes: list[object] = []
    for values in ({"url": from_url}, from_settings):
        try:
            context = connect_context(DatabaseSettings(**values))
        except ConfigurationError:
            outcomes.append("refused")
        else:
            outcomes.append(
                "off" if context is None else (context.check_hostname, context.verify_mode)
            )
    event(f"{backend}: {outcomes[0]}")
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] != "refused") == valid(mode, ca, cert, key, pw)


def test_an_encrypted_key_without_its_password_fails_at_startup_instead_of_prompting(
    files: dict[str, Path],
) -> None:
    with pytest.raises(ConfigurationError, match="encrypted key without DB_TLS_KEY_PASSWORD"):
        DatabaseSettings(
            url="postgresql+asyncpg://app@db/app",
            tls="verify-full",
            tls_cert_file=files["cert"],
            tls_key_file=files["encrypted key"],
        )


def test_verification_without_a_ca_file_needs_the_system_trust_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = "postgresql+asyncpg://app@db/app"
    assert connect_context(DatabaseSettings(url=url, tls="verify-full")) is not None
    # OpenSSL finds the trust store through these when they are set.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "none"))
    with pytest.raises(ConfigurationError, match="no trust store"):
        DatabaseSettings(url=url, tls="verify-full")


@pytest.mark.parametrize("variable", ["PGSSLMODE", "PGSSLROOTCERT"])
def test_libpq_tls_variables_are_refused_rather_than_ignored(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv(variable, "verify-full" if variable == "PGSSLMODE" else "/etc/ca.pem")
    with pytest.raises(ConfigurationError, match=f"{variable}.*does not read"):
        DatabaseSettings(url="postgresql+asyncpg://app@db/app")
    # Once DB_TLS says what to do, the variables are simply not read.
    DatabaseSettings(url="postgresql+asyncpg://app@db/app", tls="require")


@pytest.mark.parametrize(
    ("variable", "value", "instead"),
    [
        ("PGSSLROOTCERT", "/etc/ca.pem", "DB_TLS_CA_FILE instead of PGSSLROOTCERT"),
        ("PGSSLCERT", "/etc/client.pem", "DB_TLS_CERT_FILE instead of PGSSLCERT"),
        ("PGSSLCRL", "/etc/crl.pem", "an ssl_context= in code instead of PGSSLCRL"),
    ],
)
@pytest.mark.parametrize("tls", [None, "disable"])
def test_a_libpq_tls_variable_alone_is_refused_while_tls_is_off(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, instead: str, tls: str | None
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as refused:
        DatabaseSettings(url="postgresql+asyncpg://app@db/app", tls=tls)
    message = str(refused.value)
    assert f"is {'not set' if tls is None else tls}, but the environment has {variable}" in message
    assert instead in message
    monkeypatch.setenv("PGSSLMODE", "disable")
    monkeypatch.delenv(variable)
    DatabaseSettings(url="postgresql+asyncpg://app@db/app", tls=tls)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app@/app?host=/var/run/postgresql",
        "mysql+asyncmy://app@localhost/app?unix_socket=/run/mysqld/mysqld.sock",
    ],
)
def test_tls_over_a_unix_socket_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="Unix socket"):
        DatabaseSettings(url=url, tls="require")


@pytest.mark.parametrize("url", ["postgresql+asyncpg://app@/app", "mysql+asyncmy://app@/app"])
def test_tls_without_a_host_in_the_url_is_refused(url: str) -> None:
    # The driver would pick a host itself (PGHOST, a socket): nothing to verify against.
    with pytest.raises(ConfigurationError, match="names no host"):
        DatabaseSettings(url=url, tls="verify-full")


def test_tls_on_sqlite_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SQLite has no network connection"):
        DatabaseSettings(url="sqlite+aiosqlite:///app.db", tls="verify-full")


@pytest.mark.parametrize("key", ["sslmode", "ssl", "tls", "SSL_CA"])
def test_tls_parameters_in_a_sqlite_url_are_refused(key: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{key}: SQLite has no network connection"):
        DatabaseSettings(url=f"sqlite+aiosqlite:///app.db?{key}=require")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgres://app:pw@db.example/app?sslmode=verify-full", "write postgresql+asyncpg://"),
        ("PostgreSQL+asyncpg://app@db.example/app?sslmode=require", "write postgresql+asyncpg://"),
        ("MYSQL+asyncmy://app@db.example/app?ssl_mode=REQUIRED", "write mysql+asyncmy://"),
        ("cockroachdb+asyncpg://app@db.example/app?sslmode=verify-full", "is not supported"),
    ],
)
def test_a_url_no_backend_serves_is_refused_for_that_first_whatever_its_tls(
    url: str, says: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Database(url=url)
    assert says in str(refused.value)
    assert "pw" not in str(refused.value)


# -- the doctor -------------------------------------------------------------------------------


async def test_the_doctor_warns_that_require_does_not_stop_interception(
    tls_server: TlsServer,
) -> None:
    url = tls_server.url(password=tls_server.password)
    unverified = await examine(Database(url=url, tls="require"), workers=1)
    (finding,) = [finding for finding in unverified if finding.check == "tls"]
    assert finding.level == "warning"
    assert "not verified" in finding.message
    verified = await examine(
        Database(url=url, tls="verify-full", tls_ca_file=tls_server.ca), workers=1
    )
    (finding,) = [finding for finding in verified if finding.check == "tls"]
    assert finding.level == "ok"
    assert "host name verified" in finding.message
