"""The escape hatch for managed databases: what settings cannot say, given in code, without
undoing the limits, the read engine's read-only mode or TLS.

The rotating-password tests run the token pattern of docs/tls.md against the session's
TLS servers, whose ``password_user`` password a test may rotate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncmy
import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import JSON, Column, Integer, MetaData, Table, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import StatementError

from fastapi_asyncdb import (
    ConfigurationError,
    Database,
    DatabaseSettings,
    DatabaseUnavailableError,
    SessionDep,
    install,
)
from tests.servers.certificates import client_context
from tests.servers.postgresql import PostgresCluster

from .secret_scan import Evidence, capturing_logs, find_leaks, new_secret
from .tls_servers import (
    MISMATCHED_HOST,
    PASSWORD_USER,
    TLS_BACKENDS,
    TlsServer,
    both_engines_encrypted,
    collecting_asyncmy_sockets,
)

pytestmark = pytest.mark.usefixtures("clean_environment")

SECRET = "t0ken-5ecret-7f3a"
URLS = {
    "sqlite": "sqlite+aiosqlite:///./data/app.db",
    "postgresql": "postgresql+asyncpg://app@db.internal/app",
    "mysql": "mysql+asyncmy://app@db.internal/app",
}


@pytest.fixture(params=TLS_BACKENDS)
def tls_server(request: pytest.FixtureRequest) -> TlsServer:
    return TlsServer.of(request, str(request.param))


async def answering_again(database: Database) -> None:
    """Wait (5 s at most) until a unit of work answers: the breaker's probe has seen a
    connection made again."""
    async with asyncio.timeout(5):
        while True:
            try:
                assert await scalar(database, "SELECT 1") == 1
                return
            except DatabaseUnavailableError:
                await asyncio.sleep(0.05)


async def scalar(database: Database, sql: str, *, read: bool = False) -> Any:
    if read:
        async with database.read_connection() as connection:
            return (await connection.execute(text(sql))).scalar_one()
    async with database.transaction() as session:
        return (await session.execute(text(sql))).scalar_one()


async def refusal(database: Database, *, read: bool = False) -> DatabaseUnavailableError:
    with collecting_asyncmy_sockets():
        with pytest.raises(DatabaseUnavailableError) as refused:
            await scalar(database, "SELECT 1", read=read)
        error = refused.value
        del refused
    return error


# -- connect_args ----------------------------------------------------------------------------


def argument_names(arguments: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Each argument as connect_args would give it: nested ones inside their mapping."""
    given: list[tuple[str, Any]] = []
    for name, value in arguments.items():
        if isinstance(value, Mapping):
            given += [(f"{name}.{key}", {name: {key: "0"}}) for key in value]
        else:
            given.append((name, {name: value}))
    return given


@pytest.mark.parametrize("backend", list(URLS))
def test_connect_args_cannot_set_what_the_library_sets(backend: str) -> None:
    database = Database(url=URLS[backend])
    library = {
        **database.backend.connect_args(read_only=False),
        **database.backend.connect_args(read_only=True),
    }
    owned = [
        (name, {outer: {inner: "0"}} if inner else {name: 0})
        for name in database.backend.owned_connect_arguments
        for outer, _, inner in [name.partition(".")]
    ]
    cases = [*argument_names(library), *owned]
    assert cases
    for name, connect_args in cases:
        refusal = rf"connect_args=: {name} is set by"
        with pytest.raises(ConfigurationError, match=refusal) as refused:
            Database(url=URLS[backend], connect_args=connect_args)
        controller = database.backend.owned_connect_arguments.get(name)
        if controller is not None:
            assert controller in str(refused.value)


@pytest.mark.parametrize(
    ("backend", "connect_args", "setting"),
    [
        ("postgresql", {"command_timeout": None}, "DB_COMMAND_TIMEOUT"),
        ("postgresql", {"server_settings": {"statement_timeout": "0"}}, "DB_STATEMENT_TIMEOUT"),
        ("postgresql", {"server_settings": {"options": "-c statement_timeout=0"}}, "one server"),
        ("postgresql", {"ssl": "prefer"}, "DB_TLS"),
        ("mysql", {"read_timeout": None}, "DB_COMMAND_TIMEOUT"),
        ("mysql", {"ssl": {"ca": "ca.pem"}}, "DB_TLS"),
        ("mysql", {"password": "pw"}, "password="),
    ],
)
def test_refused_connect_args_name_the_setting_to_use(
    backend: str, connect_args: dict[str, Any], setting: str
) -> None:
    with pytest.raises(ConfigurationError, match=setting):
        Database(url=URLS[backend], connect_args=connect_args)


MISTAKEN_CONNECT_ARGS: dict[str, list[tuple[dict[str, Any], str]]] = {
    "postgresql": [
        (
            {"statment_cache_size": 0},
            "statment_cache_size is not an argument of asyncpg.connect "
            r"\(did you mean statement_cache_size\?\)",
        ),
        (
            {"statement_cache_size": "0"},
            "statement_cache_size is a str, where asyncpg.connect takes a number",
        ),
        ({"server_settings": {"lock_timeout": 2500}}, "server_settings.lock_timeout is a int"),
    ],
    "mysql": [
        ({"ssl_disabled": True}, "ssl_disabled is not an argument of asyncmy.connect"),
        ({"max_allowed_packet": "16M"}, "max_allowed_packet is a str, where asyncmy.connect"),
    ],
}


@pytest.mark.backends("postgresql", "mysql")
async def test_connect_args_the_driver_cannot_take_are_refused_at_construction(
    database_url: str, backend: str
) -> None:
    for connect_args, complaint in MISTAKEN_CONNECT_ARGS[backend]:
        with pytest.raises(ConfigurationError, match=f"connect_args=: {complaint}"):
            Database(url=database_url, connect_args=connect_args)
    # What the driver takes, as it takes it, connects (SQLAlchemy's own asyncpg ones too).
    fine: dict[str, Any] = (
        {
            "statement_cache_size": 0,
            "max_cached_statement_lifetime": 2.5,
            "prepared_statement_cache_size": 50,
            "server_settings": {"lock_timeout": "2500"},
        }
        if backend == "postgresql"
        else {"max_allowed_packet": 1 << 24, "local_infile": False, "charset": "utf8mb4"}
    )
    async with Database(url=database_url, connect_args=fine) as database:
        assert await scalar(database, "SELECT 1") == 1
    # A creator takes connect_args for itself: a connector's own names are its to judge.

    async def creator(**arguments: Any) -> Any:
        arguments.pop("ip_type")
        if backend == "postgresql":
            return await asyncpg.connect(**arguments)
        return await asyncmy.connect(**arguments)

    async with Database(
        url=database_url, async_creator=creator, connect_args={"ip_type": "private"}
    ) as database:
        assert await scalar(database, "SELECT 1") == 1


AUTOCOMMIT_KNOBS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "mysql": [
        ("?autocommit=true", {}),
        ("?autocommit=false", {}),  # a string: true to the driver
        ("", {"autocommit": True}),
        ("", {"AUTOCOMMIT": 1}),
    ],
    "sqlite": [
        ("", {"isolation_level": None}),
        ("", {"autocommit": True}),
        ("?isolation_level=IMMEDIATE", {}),
    ],
}


@pytest.mark.backends("mysql", "sqlite")
def test_autocommit_is_refused_in_the_url_and_in_connect_args(
    database_url: str, backend: str
) -> None:
    for query, connect_args in AUTOCOMMIT_KNOBS[backend]:
        where = "connect_args=" if connect_args else r"DATABASE_URL \(url\)"
        with pytest.raises(ConfigurationError, match=f"{where}: .*transactions out of"):
            Database(url=database_url + query, connect_args=connect_args)


@pytest.mark.backends("postgresql", "mysql")
async def test_connect_args_add_to_the_limits_and_leave_them_in_force(database_url: str) -> None:
    backend = make_url(database_url).get_backend_name()
    extra: dict[str, Any] = (
        {"server_settings": {"lock_timeout": "2500"}}
        if backend == "postgresql"
        else {"init_command": "SET SESSION lock_wait_timeout = 7"}
    )
    async with Database(url=database_url, statement_timeout=3, connect_args=extra) as database:
        for read in (False, True):
            if backend == "postgresql":
                assert await scalar(database, "SHOW lock_timeout", read=read) == "2500ms"
                assert await scalar(database, "SHOW statement_timeout", read=read) == "3s"
            else:
                assert await scalar(database, "SELECT @@lock_wait_timeout", read=read) == 7
                assert float(await scalar(database, "SELECT @@max_statement_time", read=read)) == 3
        read_only = (
            "SHOW default_transaction_read_only"
            if backend == "postgresql"
            else "SELECT @@tx_read_only"
        )
        assert str(await scalar(database, read_only, read=True)) in ("on", "1")


@pytest.mark.parametrize("backend", TLS_BACKENDS)
def test_connect_args_cannot_move_a_tls_connection_onto_a_unix_socket(
    request: pytest.FixtureRequest, backend: str
) -> None:
    # The server's own socket: a connection there would work, unencrypted, while
    # DB_TLS=verify-full says otherwise (the drivers skip TLS on a socket).
    tls_server = TlsServer.of(request, backend)
    server = tls_server.server
    socket = (
        {"host": str(server.process.directory)}
        if isinstance(server, PostgresCluster)
        else {"unix_socket": str(server.socket)}
    )
    for connect_args in (socket, {"port": 1}):
        with pytest.raises(ConfigurationError, match=r"DATABASE_URL \(url\), which alone says"):
            Database(
                url=tls_server.url("postgres" if backend == "postgresql" else PASSWORD_USER),
                tls="verify-full",
                tls_ca_file=tls_server.ca,
                connect_args=connect_args,
            )


# -- ssl_context -----------------------------------------------------------------------------


async def test_an_ssl_context_built_in_code_is_used_as_it_is(tls_server: TlsServer) -> None:
    context = client_context(tls_server.certificates)
    url = tls_server.url(password=tls_server.password)
    async with Database(url=url, ssl_context=context) as database:
        assert await both_engines_encrypted(database)
    mismatched = tls_server.url(host=MISMATCHED_HOST, password=tls_server.password)
    async with Database(url=mismatched, ssl_context=context) as database:
        assert "IP address mismatch" in str(await refusal(database))


def test_an_ssl_context_that_verifies_nothing_needs_tls_require() -> None:
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    url = URLS["postgresql"]
    with pytest.raises(ConfigurationError, match=r"verifies no certificate.*DB_TLS=require"):
        DatabaseSettings(url=url, ssl_context=unverified, tls="verify-full")
    with pytest.raises(ConfigurationError, match=r"verifies no certificate.*DB_TLS=require"):
        DatabaseSettings(url=url, ssl_context=unverified)
    assert DatabaseSettings(url=url, ssl_context=unverified, tls="require")
    with pytest.raises(ConfigurationError, match="is disable, but an ssl_context"):
        DatabaseSettings(url=url, ssl_context=unverified, tls="disable")
    with pytest.raises(ConfigurationError, match=r"DB_TLS_CA_FILE.*carries its own"):
        DatabaseSettings(url=url, ssl_context=ssl.create_default_context(), tls_ca_file="ca.pem")
    with pytest.raises(ConfigurationError, match="one place"):
        DatabaseSettings(url=f"{url}?sslmode=require", ssl_context=unverified)


# -- a password or token for every new connection ---------------------------------------------


class TokenService:
    """Hands out the server's current password, as an IAM token endpoint hands out tokens."""

    def __init__(self, server: TlsServer) -> None:
        self.server = server
        self.issued = 0
        self.stale: str | None = None

    async def __call__(self) -> str:
        await asyncio.sleep(0)  # a real one asks over the network
        self.issued += 1
        return self.stale or self.server.password


async def test_every_new_connection_gets_the_current_token_as_the_password_rotates(
    tls_server: TlsServer,
) -> None:
    tokens = TokenService(tls_server)
    # NullPool: each unit of work is a new connection, so each one asks for a token.
    database = Database(
        url=tls_server.url(),
        tls="verify-full",
        tls_ca_file=tls_server.ca,
        password=tokens,
        pool_class="NullPool",
    )
    async with database:
        # The startup's connection budget check made one connection, with one token.
        assert tokens.issued == 1
        for unit in range(1, 4):
            tls_server.rotate_password()
            assert await scalar(database, "SELECT 1") == 1
            assert tokens.issued == 1 + unit
        assert await scalar(database, "SELECT 1", read=True) == 1
        assert tokens.issued == 5


async def test_open_connections_outlive_the_rotation_and_a_stale_token_fails_clearly(
    tls_server: TlsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = TokenService(tls_server)
    database = Database(
        url=tls_server.url(),
        tls="verify-full",
        tls_ca_file=tls_server.ca,
        password=tokens,
        echo=True,
        echo_pool=True,
    )
    async with database:
        async with database.transaction() as session:
            old = tls_server.password
            tls_server.rotate_password()
            # A new connection, on the read engine, with the new password...
            assert await scalar(database, "SELECT 1", read=True) == 1
            # ...while the one made with the old password keeps working.
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        tokens.stale = old
        async with database.read_connection() as connection:
            await connection.invalidate()  # the next read needs a new connection
        error = await refusal(database, read=True)
        message = str(error)
        assert f"as {PASSWORD_USER}" in message
        assert (
            f'password authentication failed for user "{PASSWORD_USER}"' in message
            if tls_server.backend == "postgresql"
            else f"Access denied for user '{PASSWORD_USER}'" in message
        )
        # The next token works again, once the breaker's probe has seen it do so.
        tokens.stale = None
        await answering_again(database)
    for text_shown in (message, repr(error.__cause__), caplog.text, repr(database.settings)):
        assert old not in text_shown
        assert tls_server.password not in text_shown


@pytest.mark.backends("postgresql", "mysql")
@pytest.mark.parametrize("trouble", ["raises", "hangs"])
async def test_a_failing_token_provider_is_an_outage_that_says_so(
    database_url: str, trouble: str
) -> None:
    async def provider() -> str:
        if trouble == "raises":
            raise RuntimeError("the token service is down")
        await asyncio.sleep(10)
        return "never"

    async with Database(url=database_url, password=provider, connect_timeout=0.2) as database:
        message = str(await refusal(database))
    assert (
        "the password provider failed: RuntimeError" in message
        if trouble == "raises"
        else "the password provider did not answer within 0.2 s" in message
    )


@pytest.mark.backends("postgresql", "mysql")
async def test_a_stuck_sync_provider_holds_one_thread_and_works_again_once_it_returns(
    database_url: str,
) -> None:
    # A token service that stops answering, called without a timeout: the thread cannot
    # be cancelled and stays in the call until the service answers again.
    answering = threading.Event()
    answering.set()
    calls: list[float] = []

    def provider() -> str:
        calls.append(time.monotonic())
        answering.wait(30)
        return make_url(database_url).password or ""

    loop = asyncio.get_running_loop()
    database = Database(
        url=database_url,
        password=provider,
        pool_class="NullPool",  # each unit of work a new connection, which asks
        connect_timeout=0.3,
        budget_check="off",
    )
    try:
        async with database:
            assert await scalar(database, "SELECT 1") == 1
            answering.clear()
            before = len(calls)
            for _ in range(4):  # many units at once, and the breaker's probes
                outcomes = await asyncio.gather(
                    *(scalar(database, "SELECT 1") for _ in range(12)), return_exceptions=True
                )
                assert all(isinstance(item, DatabaseUnavailableError) for item in outcomes)
                await asyncio.sleep(0.3)
            assert len(calls) == before + 1  # one call in flight; the others waited for it
            # The loop's default executor is untouched: DNS and to_thread still work.
            async with asyncio.timeout(2):
                assert await loop.getaddrinfo("localhost", 5432)
                assert await asyncio.to_thread(lambda: "free") == "free"
            answering.set()
            recovered_at = time.monotonic()
            await answering_again(database)
            assert time.monotonic() - recovered_at < 2
            # New connections ask the provider again, each its own call.
            asked = len(calls)
            assert await scalar(database, "SELECT 1") == 1
            assert len(calls) == asked + 1
    finally:
        answering.set()


@pytest.mark.backends("postgresql", "mysql")
@pytest.mark.parametrize("returned", [None, b"t0ken-as-bytes-SECRET", 48151623])
async def test_a_provider_returning_no_str_is_a_503_that_names_only_the_type(
    database_url: str, returned: object
) -> None:
    def provider() -> Any:
        return returned

    database = Database(url=database_url, password=provider, budget_check="off")
    app = FastAPI(lifespan=database.lifespan)
    install(app, database)

    @app.get("/one")
    async def one(session: SessionDep) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    async with database:
        error = await refusal(database)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            answer = await client.get("/one")
    assert f"the password provider returned {type(returned).__name__}, not str" in str(error)
    assert answer.status_code == 503
    assert answer.headers["retry-after"]
    for shown in (str(error), answer.text):
        assert "SECRET" not in shown
        assert "48151623" not in shown


@pytest.mark.backends("postgresql", "mysql")
@pytest.mark.parametrize("code", ["async provider", "sync provider", "async_creator"])
async def test_a_credential_in_the_error_of_a_provider_or_creator_is_never_shown(
    database_url: str, code: str
) -> None:
    # A token SDK's error quotes what it sent: here, a refresh token.
    secret = new_secret()
    complaint = f"credential refresh failed for refresh token {secret} (expired)"

    async def failing(*_args: Any, **_arguments: Any) -> Any:
        raise RuntimeError(complaint)

    def failing_in_a_thread() -> str:
        raise RuntimeError(complaint)

    choices: dict[str, dict[str, Any]] = {
        "async provider": {"password": failing},
        "sync provider": {"password": failing_in_a_thread},
        "async_creator": {"async_creator": failing},
    }
    options = choices[code]
    evidence = Evidence()
    with capturing_logs(evidence):
        async with Database(url=database_url, budget_check="off", **options) as database:
            error = await refusal(database)
            evidence.exception("refusal", error)
            await evidence.database_state(database)
    assert find_leaks(secret, evidence.texts) == []
    failed = "the async_creator" if code == "async_creator" else "the password provider"
    assert f"{failed} failed: RuntimeError (its message is not shown" in str(error)


async def test_a_static_or_synchronous_password_is_accepted_and_kept_secret(
    tls_server: TlsServer,
) -> None:
    password = tls_server.password
    for given in (password, lambda: password):
        database = Database(
            url=tls_server.url(), tls="verify-full", tls_ca_file=tls_server.ca, password=given
        )
        assert password not in repr(database.settings)
        assert password not in str(database.settings.model_dump())
        async with database:
            assert await scalar(database, "SELECT 1") == 1


def test_a_password_is_given_in_one_place() -> None:
    with pytest.raises(ConfigurationError, match="password=: DATABASE_URL carries a password"):
        DatabaseSettings(url="postgresql+asyncpg://app:pw@db/app", password=lambda: "token")
    with pytest.raises(ConfigurationError, match="SQLite has no password"):
        Database(url=URLS["sqlite"], password="pw")


# -- async_creator: connections made by your own code ------------------------------------------


def forwarding_creator(backend: str, calls: list[dict[str, Any]], **override: Any) -> Any:
    """A connector's shape: it picks what it needs and passes the rest on to the driver."""

    async def create(**arguments: Any) -> Any:
        calls.append(arguments)
        arguments = {**arguments, **override}
        for name in [name for name, value in override.items() if value is None]:
            del arguments[name]
        if backend == "postgresql":
            return await asyncpg.connect(**arguments)
        return await asyncmy.connect(**arguments)

    return create


async def test_a_creator_gets_the_library_arguments_and_its_connections_keep_every_limit(
    tls_server: TlsServer,
) -> None:
    calls: list[dict[str, Any]] = []
    database = Database(
        url=tls_server.url(),
        tls="verify-full",
        tls_ca_file=tls_server.ca,
        password=TokenService(tls_server),
        statement_timeout=4,
        async_creator=forwarding_creator(tls_server.backend, calls),
    )
    async with database:
        assert await both_engines_encrypted(database)
        if tls_server.backend == "postgresql":
            assert await scalar(database, "SHOW statement_timeout", read=True) == "4s"
            assert await scalar(database, "SHOW default_transaction_read_only", read=True) == "on"
        else:
            assert float(await scalar(database, "SELECT @@max_statement_time", read=True)) == 4
            assert await scalar(database, "SELECT @@tx_read_only", read=True) == 1
    library = database.backend.connect_args(read_only=True)
    assert calls
    for arguments in calls:
        assert set(library) <= set(arguments)
        assert arguments["password"] == tls_server.password


async def test_a_connector_shaped_creator_works_from_a_bare_url(tls_server: TlsServer) -> None:
    # The shape of docs/tls.md's Cloud SQL example: the URL names only the dialect, and
    # the creator brings the address, the login and the transport, passing the rest on.
    target = make_url(tls_server.url())
    received: list[dict[str, Any]] = []

    async def connector(**arguments: Any) -> Any:
        received.append(dict(arguments))
        transport = client_context(tls_server.certificates)
        login = {
            "host": target.host,
            "port": target.port,
            "user": target.username,
            "password": tls_server.password,
            "ssl": transport,
        }
        if tls_server.backend == "postgresql":
            return await asyncpg.connect(database=target.database, **login, **arguments)
        return await asyncmy.connect(db=target.database, **login, **arguments)

    bare = "postgresql+asyncpg://" if tls_server.backend == "postgresql" else "mysql+asyncmy://"
    async with Database(url=bare, async_creator=connector, statement_timeout=6) as database:
        assert await both_engines_encrypted(database)
        if tls_server.backend == "postgresql":
            assert await scalar(database, "SHOW statement_timeout", read=True) == "6s"
        else:
            assert float(await scalar(database, "SELECT @@max_statement_time", read=True)) == 6
    assert received
    library = set(database.backend.connect_args(read_only=True)) - {"ssl"}
    for arguments in received:
        assert library <= set(arguments)
        assert not {"host", "port", "user", "database", "db", "ssl"} & set(arguments)


@pytest.mark.parametrize(
    ("backend", "dropped", "complaint"),
    [
        ("postgresql", "server_settings", "statement_timeout=15000 \\(has 0\\)"),
        ("postgresql", "command_timeout", "command_timeout=20.0 \\(has None\\)"),
        ("mysql", "read_timeout", "read_timeout=20.0 \\(has None\\)"),
    ],
)
async def test_a_creator_that_drops_the_limits_is_refused_and_its_connection_closed(
    request: pytest.FixtureRequest, backend: str, dropped: str, complaint: str
) -> None:
    tls_server = TlsServer.of(request, backend)
    made: list[Any] = []
    inner = forwarding_creator(tls_server.backend, [], **{dropped: None})

    async def create(**arguments: Any) -> Any:
        made.append(await inner(**arguments))
        return made[-1]

    database = Database(
        url=tls_server.url(password=tls_server.password),
        tls="verify-full",
        tls_ca_file=tls_server.ca,
        async_creator=create,
    )
    async with database:
        with pytest.raises(ConfigurationError, match=f"async_creator=: .*{complaint}"):
            await scalar(database, "SELECT 1", read=True)
    assert made
    for connection in made:
        if backend == "postgresql":
            assert connection.is_closed()
        else:
            assert connection._transport is None


@pytest.mark.backends("mysql")
@pytest.mark.parametrize("autocommit", [True, None])  # None: the server's default, on
async def test_a_creator_whose_connection_autocommits_is_refused_and_nothing_is_committed(
    database_url: str, autocommit: bool | None
) -> None:
    table = Table("managed_autocommit", MetaData(), Column("id", Integer, primary_key=True))
    async with Database(url=database_url) as plain:
        async with plain.engine.begin() as connection:
            await connection.run_sync(table.metadata.drop_all)
            await connection.run_sync(table.metadata.create_all)

        async def creator(**arguments: Any) -> Any:
            # It passes on every argument it gets, and adds one.
            return await asyncmy.connect(**arguments, autocommit=autocommit)

        async with Database(url=database_url, async_creator=creator) as database:
            for read in (False, True):
                with pytest.raises(ConfigurationError, match="autocommit on"):
                    if read:
                        await scalar(database, "SELECT 1", read=True)
                        continue
                    async with database.transaction() as session:
                        await session.execute(insert(table).values(id=1))
                        raise RuntimeError("the handler failed: the insert must roll back")
        try:
            async with plain.read_connection() as connection:
                assert (await connection.execute(select(table.c.id))).all() == []
        finally:
            async with plain.engine.begin() as connection:
                await connection.run_sync(table.metadata.drop_all)


@pytest.mark.parametrize("backend", TLS_BACKENDS)
async def test_a_creator_whose_connection_is_not_encrypted_is_refused_when_tls_is_on(
    request: pytest.FixtureRequest, backend: str
) -> None:
    plaintext = TlsServer.of(request, backend, tls=False)
    tls_server = TlsServer.of(request, backend)
    user = "postgres" if backend == "postgresql" else "root"
    target = make_url(plaintext.url(user))
    # The connector decides where to connect and how: here, to a server without TLS.
    creator = forwarding_creator(
        backend, [], host=target.host, port=target.port, user=user, password=None, ssl=None
    )
    database = Database(
        url=tls_server.url(password=tls_server.password),
        tls="verify-full",
        tls_ca_file=tls_server.ca,
        async_creator=creator,
    )
    async with database:
        with pytest.raises(ConfigurationError, match="TLS \\(the connection is not encrypted"):
            await scalar(database, "SELECT 1")


# -- JSON ------------------------------------------------------------------------------------

documents = Table(
    "managed_documents", MetaData(), Column("id", Integer, primary_key=True), Column("body", JSON)
)


def dumps_decimals(value: object) -> str:
    return json.dumps(value, default=lambda item: {"$decimal": str(item)})


def loads_decimals(text: str) -> object:
    return json.loads(
        text, object_hook=lambda item: Decimal(item["$decimal"]) if "$decimal" in item else item
    )


async def test_json_serializer_and_deserializer_are_used_on_every_backend(
    database_url: str,
) -> None:
    exact = Database(
        url=database_url, json_serializer=dumps_decimals, json_deserializer=loads_decimals
    )
    async with exact:
        async with exact.engine.begin() as connection:
            await connection.run_sync(documents.metadata.drop_all)
            await connection.run_sync(documents.metadata.create_all)
        async with exact.transaction() as session:
            await session.execute(insert(documents).values(id=1, body={"amount": Decimal("0.10")}))
        async with exact.read_connection() as connection:
            body = (await connection.execute(select(documents.c.body))).scalar_one()
        assert body == {"amount": Decimal("0.10")}
    async with Database(url=database_url) as plain:
        with pytest.raises(StatementError, match="not JSON serializable"):
            async with plain.transaction() as session:
                await session.execute(insert(documents).values(id=2, body={"a": Decimal("1")}))
        async with plain.engine.begin() as connection:
            await connection.run_sync(documents.metadata.drop_all)


def dumps_bytes(value: object) -> bytes:
    """orjson.dumps's shape: JSON as bytes."""
    return json.dumps(value).encode()


async def test_a_json_serializer_returning_bytes_is_refused_on_postgresql_and_decoded_works(
    database_url: str, backend: str
) -> None:
    if backend == "postgresql":
        # asyncpg refuses bytes for a JSON parameter: every write would fail.
        with pytest.raises(ConfigurationError, match="json_serializer=: returns bytes, not str"):
            Database(url=database_url, json_serializer=dumps_bytes)
    else:
        Database(url=database_url, json_serializer=dumps_bytes)  # stored as they are

    def decoded(value: object) -> str:
        return dumps_bytes(value).decode()

    async with Database(url=database_url, json_serializer=decoded) as database:
        async with database.engine.begin() as connection:
            await connection.run_sync(documents.metadata.drop_all)
            await connection.run_sync(documents.metadata.create_all)
        try:
            async with database.transaction() as session:
                await session.execute(insert(documents).values(id=1, body={"a": [1, None]}))
            async with database.read_connection() as connection:
                body = (await connection.execute(select(documents.c.body))).scalar_one()
            assert body == {"a": [1, None]}
        finally:
            async with database.engine.begin() as connection:
                await connection.run_sync(documents.metadata.drop_all)


# -- code only, and never printed ----------------------------------------------------------------


def test_code_only_options_are_not_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A compose file's DB_PASSWORD is not a password nobody asked for.
    monkeypatch.setenv("DB_PASSWORD", SECRET)
    monkeypatch.setenv("DB_CONNECT_ARGS", "not even JSON")
    monkeypatch.setenv("DB_ASYNC_CREATOR", "module:function")
    settings = DatabaseSettings(url=URLS["postgresql"])
    assert settings.password is None
    assert settings.connect_args == {}
    assert settings.async_creator is None


def test_code_only_secrets_never_appear_in_reprs_or_dumps() -> None:
    async def connector(**arguments: Any) -> Any:
        raise AssertionError("never called")

    settings = DatabaseSettings(
        url=URLS["postgresql"],
        password=SECRET,
        # A connector's own argument: asyncpg would not take it, a creator does.
        connect_args={"api_token": SECRET, "statement_cache_size": 0},
        async_creator=connector,
        ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
    )
    database = Database(settings)
    for shown in (
        repr(settings),
        str(settings),
        repr(database),
        str(settings.model_dump()),
        settings.model_dump_json(),
    ):
        assert SECRET not in shown
    assert settings.driver_connect_args["api_token"] == SECRET


def test_configure_keeps_the_code_only_options() -> None:
    context = ssl.create_default_context()

    async def token() -> str:
        return SECRET

    async def creator(**arguments: Any) -> Any:
        raise AssertionError("never called")

    database = Database(
        url=URLS["postgresql"],
        ssl_context=context,
        password=token,
        async_creator=creator,
        connect_args={"statement_cache_size": 0},
    )
    database.configure(pool_size=3)
    settings = database.settings
    assert settings.pool_size == 3
    assert settings.ssl_context is context
    assert settings.password is token
    assert settings.async_creator is creator
    assert settings.connect_args == {"statement_cache_size": 0}
