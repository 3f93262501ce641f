from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_settings import SettingsConfigDict
from sqlalchemy import text as sql
from sqlalchemy.exc import DBAPIError

from fastapi_asyncdb import ConfigurationError, Database, DatabaseSettings

pytestmark = pytest.mark.usefixtures("clean_environment")

SECRET = "s3cr3t-Pa55"


def test_defaults_are_a_sqlite_file_with_pre_ping_and_every_timeout_set() -> None:
    settings = DatabaseSettings()
    assert Database(settings).backend.name == "sqlite"
    assert settings.sqlalchemy_url.database == "./data/app.db"
    assert settings.pool_pre_ping is True
    assert settings.pool_class == "AsyncAdaptedQueuePool"
    for timeout in (
        settings.pool_timeout,
        settings.connect_timeout,
        settings.command_timeout,
        settings.statement_timeout,
        settings.idle_in_transaction_timeout,
    ):
        assert timeout is not None
        assert 0 < timeout <= 60


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@db.internal/app")
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    monkeypatch.setenv("DB_MAX_OVERFLOW", "0")
    monkeypatch.setenv("DB_POOL_TIMEOUT", "2.5")
    monkeypatch.setenv("DB_POOL_RECYCLE", "600")
    monkeypatch.setenv("DB_POOL_PRE_PING", "false")
    monkeypatch.setenv("DB_ECHO", "true")
    settings = DatabaseSettings()
    assert Database(settings).backend.name == "postgresql"
    assert (settings.pool_size, settings.max_overflow) == (7, 0)
    assert (settings.pool_timeout, settings.pool_recycle) == (2.5, 600)
    assert settings.pool_pre_ping is False
    assert settings.echo is True


def test_code_overrides_take_field_names() -> None:
    settings = DatabaseSettings(url="mysql+asyncmy://root@localhost/app", pool_size=3)
    assert Database(settings).backend.name == "mysql"
    assert settings.pool_size == 3
    assert settings.effective_read_pool_size == 3


def test_read_pool_defaults_to_the_primary_pool_sizes_and_can_differ() -> None:
    settings = DatabaseSettings(pool_size=4, max_overflow=2, read_pool_size=9)
    assert settings.effective_read_pool_size == 9
    assert settings.effective_read_max_overflow == 2


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://"),
        ("mysql+pymysql://u@h/db", "mysql+asyncmy://"),
        ("sqlite:///app.db", "sqlite+aiosqlite://"),
    ],
)
def test_sync_driver_fails_at_construction_naming_the_async_one(url: str, advice: str) -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_URL") as caught:
        Database(url=url)
    assert advice in str(caught.value)


def test_queue_pool_is_refused_with_the_asyncio_compatible_alternative() -> None:
    with pytest.raises(ConfigurationError, match=r"DB_POOL_CLASS.*AsyncAdaptedQueuePool"):
        DatabaseSettings(pool_class="QueuePool")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pool_size", 0),
        ("pool_size", -1),
        ("max_overflow", -1),
        ("pool_timeout", 0),
        ("connect_timeout", -5),
        ("command_timeout", 0),
    ],
)
def test_zero_or_negative_sizes_and_timeouts_name_the_variable(field: str, value: int) -> None:
    with pytest.raises(ConfigurationError, match=f"DB_{field.upper()}"):
        DatabaseSettings(**{field: value})


def test_invalid_environment_value_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "lots")
    with pytest.raises(ConfigurationError, match="DB_POOL_SIZE"):
        Database()


def test_unknown_setting_in_code_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"DB_POOL_SIZ .*spelling"):
        DatabaseSettings(pool_siz=3)


def test_missing_driver_package_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_find_spec = importlib.util.find_spec

    def without_asyncmy(name: str, package: str | None = None) -> object:
        return None if name == "asyncmy" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_asyncmy)
    with pytest.raises(ConfigurationError, match=r"fastapi-asyncdb\[mysql\]"):
        Database(url="mysql+asyncmy://root@localhost/app")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///file::memory:?uri=true",
        "sqlite+aiosqlite:///file::memory:?cache=shared&uri=true",
        "sqlite+aiosqlite:///file:x.db?mode=memory&cache=shared&uri=true",
        "sqlite+aiosqlite:///file:x.db?mode=MEMORY&uri=1",
        "sqlite+aiosqlite:///file:x.db%3Fmode%3Dmemory?uri=true",
        "sqlite+aiosqlite:///file:?uri=true",
        "sqlite+aiosqlite:///file://localhost?uri=true",
    ],
)
def test_in_memory_sqlite_in_any_form_is_refused_in_favour_of_a_file(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"in-memory SQLite database.*use a file"):
        Database(url=url)


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("sqlite+aiosqlite:///app.db?bogus=1", "'bogus', which SQLite"),
        ("sqlite+aiosqlite:///app.db?timout=5", "did you mean timeout"),
        ("sqlite+aiosqlite:///file:app.db?uri=true&mdoe=ro", "did you mean mode"),
        ("sqlite+aiosqlite:///file:app.db?mode=ro", "without uri=true"),
        ("sqlite+aiosqlite:///app.db?mode=ro&uri=true", "not a file: URI"),
    ],
)
def test_a_sqlite_query_parameter_sqlite_would_not_see_is_refused_by_name(
    url: str, refusal: str
) -> None:
    with pytest.raises(ConfigurationError, match=refusal):
        Database(url=url)


async def test_a_sqlite_file_uri_with_uri_parameters_keeps_committed_rows(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///file:{tmp_path}/sub/app.db?uri=true&cache=private&timeout=5"
    async with Database(url=url) as db:
        async with db.transaction() as session:
            await session.execute(sql("CREATE TABLE t (x int)"))
            await session.execute(sql("INSERT INTO t VALUES (1)"))
        async with db.read_session() as session:
            assert (await session.execute(sql("SELECT count(*) FROM t"))).scalar() == 1
    assert (tmp_path / "sub" / "app.db").is_file()


def test_unparseable_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        DatabaseSettings(url=f"not a url {SECRET}")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg://app:{SECRET}@db/app\n",
        f"postgresql+asyncpg://app:{SECRET}@db/app ",
        f" postgresql+asyncpg://app:{SECRET}@db/app",
        f"postgresql+asyncpg://app:{SECRET}@db/ap\tp",
        "sqlite+aiosqlite:///notes.db\r\n",
    ],
)
def test_whitespace_around_or_control_characters_in_the_url_are_refused(url: str) -> None:
    # A secret file's last newline would end up in the database name: the app would
    # start and then fail every unit of work.
    with pytest.raises(ConfigurationError) as caught:
        DatabaseSettings(url=url)
    assert "whitespace at its start or end, or a control character" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg://app:{SECRET}@db/app",
        f"postgresql+asyncpg://app@db/app?auth_token={SECRET}",
        f"postgresql+asyncpg://app@db/app?password={SECRET}",
        f"mysql+asyncmy://app@db/app?api_token={SECRET}",
    ],
)
def test_secrets_never_appear_in_reprs(url: str) -> None:
    settings = DatabaseSettings(url=url)
    try:
        described = repr(Database(settings))
    except ConfigurationError as refused:
        # A query parameter the driver does not take (auth_token) is refused by name.
        described = str(refused)
    for text in (
        repr(settings),
        str(settings),
        settings.masked_url,
        described,
        str(settings.model_dump()),
        settings.model_dump_json(),
    ):
        assert SECRET not in text
    assert "***" in settings.masked_url


def test_secrets_never_appear_in_validation_errors() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Database(url=f"postgresql://app:{SECRET}@db/app?sslpassword={SECRET}")
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_database_takes_settings_or_keywords_but_not_both() -> None:
    with pytest.raises(TypeError, match="not both"):
        Database(DatabaseSettings(), pool_size=3)


def test_an_unencoded_at_sign_in_the_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigurationError, match="%40") as caught:
        DatabaseSettings(url=f"postgresql+asyncpg://app:{SECRET}@x@db/app")
    assert SECRET not in str(caught.value)


def test_a_port_that_is_not_a_number_is_refused_as_a_bad_url() -> None:
    with pytest.raises(ConfigurationError, match="not a valid SQLAlchemy URL"):
        DatabaseSettings(url="postgresql+asyncpg://app@db:port/app")


@pytest.mark.parametrize("value", ["inf", "nan", "1e12"])
@pytest.mark.parametrize("field", ["pool_timeout", "statement_timeout", "drain_timeout"])
def test_endless_or_huge_timeouts_are_refused_naming_the_variable(field: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"DB_{field.upper()}"):
        DatabaseSettings(**{field: float(value)})


# The limits: each ends a wait, a statement or a session, on the server or here.
LIMITS = [
    "pool_timeout",
    "pool_recycle",
    "connect_timeout",
    "command_timeout",
    "statement_timeout",
    "idle_in_transaction_timeout",
    "client_connection_check_interval",
    "health_timeout",
    "drain_timeout",
]
# Compared here with a measured time, never sent: tiny means every time.
THRESHOLDS = ["pre_ping_after_idle", "slow_statement_threshold"]
# The limits that may be turned off; the others always hold.
CAN_BE_OFF = [
    "pool_recycle",
    "command_timeout",
    "statement_timeout",
    "idle_in_transaction_timeout",
    "client_connection_check_interval",
    "slow_statement_threshold",
]


@pytest.mark.parametrize("value", ["1e-7", "0.0009"])
@pytest.mark.parametrize("field", LIMITS)
def test_a_limit_under_a_millisecond_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    # MariaDB rounds max_statement_time=1e-07 to 0: no limit at all.
    variable = f"DB_{field.upper()}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=rf"{variable} \({field}\): is under 1 ms"):
        DatabaseSettings()
    with pytest.raises(ConfigurationError, match=rf"{variable} \({field}\): is under 1 ms"):
        DatabaseSettings(**{field: float(value)}, _env_file=None)
    monkeypatch.setenv(variable, "0.001")
    assert getattr(DatabaseSettings(), field) == 0.001


@pytest.mark.parametrize("field", THRESHOLDS)
def test_a_tiny_threshold_is_kept_as_every_time(field: str) -> None:
    assert getattr(DatabaseSettings(**{field: 1e-9}), field) == 1e-9


@pytest.mark.backends("mysql")
async def test_the_shortest_statement_timeout_stops_a_statement_on_mariadb(
    database_url: str,
) -> None:
    with pytest.raises(ConfigurationError, match="DB_STATEMENT_TIMEOUT"):
        Database(url=database_url, statement_timeout=0.0009)
    database = Database(url=database_url, statement_timeout=0.001, budget_check="off")
    async with database:
        async with database.transaction() as session:
            limit = (await session.execute(sql("SELECT @@max_statement_time"))).scalar_one()
            assert float(str(limit)) == 0.001
            started = time.monotonic()
            with pytest.raises(DBAPIError, match="max_statement_time exceeded"):
                await session.execute(sql("SELECT SLEEP(2)"))
            assert time.monotonic() - started < 1
        # Why there is a bound: what a shorter limit becomes on the server.
        async with database.engine.connect() as connection:
            await connection.execute(sql("SET SESSION max_statement_time = 1e-07"))
            rounded = (await connection.execute(sql("SELECT @@max_statement_time"))).scalar_one()
            assert float(str(rounded)) == 0


@pytest.mark.parametrize("word", ["none", "None", "NONE", "off", "Off", " off "])
@pytest.mark.parametrize("field", CAN_BE_OFF)
def test_a_limit_that_can_be_off_is_turned_off_by_none_or_off_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, field: str, word: str
) -> None:
    monkeypatch.setenv(f"DB_{field.upper()}", word)
    assert getattr(DatabaseSettings(), field) is None


@pytest.mark.parametrize(("value", "refusal"), [("", "is empty"), ("null", "give"), ("0", "give")])
@pytest.mark.parametrize("field", CAN_BE_OFF)
def test_an_empty_null_or_zero_limit_is_refused_pointing_to_none(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, refusal: str
) -> None:
    # An empty variable is a template's blank more often than a wish for no limit.
    variable = f"DB_{field.upper()}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=rf"{variable} .*: {refusal}.*none \(or off\)"):
        DatabaseSettings()


@pytest.mark.parametrize("word", ["none", "off"])
@pytest.mark.parametrize("field", sorted(set(LIMITS + THRESHOLDS) - set(CAN_BE_OFF)))
def test_a_limit_that_always_holds_cannot_be_turned_off(
    monkeypatch: pytest.MonkeyPatch, field: str, word: str
) -> None:
    variable = f"DB_{field.upper()}"
    monkeypatch.setenv(variable, word)
    with pytest.raises(ConfigurationError, match=f"{variable} .*: cannot be turned off"):
        DatabaseSettings()


@pytest.mark.parametrize(
    ("field", "largest"),
    [
        ("pool_size", 10_000),
        ("max_overflow", 10_000),
        ("read_pool_size", 10_000),
        ("read_max_overflow", 10_000),
        ("unavailable_retry_after", 3_600),
    ],
)
def test_a_huge_pool_or_retry_after_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, field: str, largest: int
) -> None:
    variable = f"DB_{field.upper()}"
    monkeypatch.setenv(variable, "99999999999999999999")
    with pytest.raises(ConfigurationError, match=f"{variable} .*less than or equal to {largest}"):
        DatabaseSettings()
    monkeypatch.setenv(variable, str(largest + 1))
    with pytest.raises(ConfigurationError, match=variable):
        DatabaseSettings()
    monkeypatch.setenv(variable, str(largest))
    assert getattr(DatabaseSettings(), field) == largest


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [("DB_STATEMENT_TIMOUT", "DB_STATEMENT_TIMEOUT"), ("DB_POOL_SIZE_MAX", "DB_POOL_SIZE")],
)
def test_a_misspelled_variable_is_named_with_the_setting_it_resembles(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    suggestion: str,
) -> None:
    monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("DB_HOST_FOR_SOME_SCRIPT", "elsewhere")
    with caplog.at_level("WARNING", logger="fastapi_asyncdb.settings"):
        DatabaseSettings()
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"{variable} is not a setting of fastapi-asyncdb, and is ignored; "
        f"did you mean {suggestion}?"
    ]


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("DB_SSLMODE", "DB_TLS"),
        ("DB_SSL", "DB_TLS"),
        ("DB_SSL_MODE", "DB_TLS"),
        ("DB_TLSMODE", "DB_TLS"),
        ("DB_TLS_MODE", "DB_TLS"),
        ("DATABASE_SSLMODE", "DB_TLS"),
        ("db_use_ssl", "DB_TLS"),
        ("DB_TLS_CAFILE", "DB_TLS_CA_FILE"),
        ("DB_SSLROOTCERT", "DB_TLS_CA_FILE"),
        ("DB_SSL_CERT", "DB_TLS_CERT_FILE"),
        ("DB_SSL_KEY", "DB_TLS_KEY_FILE"),
        ("DB_TLS_KEY_PASS", "DB_TLS_KEY_PASSWORD"),
    ],
)
def test_a_guessed_tls_variable_is_refused_naming_the_one_to_set(
    monkeypatch: pytest.MonkeyPatch, variable: str, meant: str
) -> None:
    # Ignored, it would leave the connection in plaintext while its author thinks it
    # encrypted.
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@db.internal/app")
    monkeypatch.setenv(variable, "verify-full")
    with pytest.raises(ConfigurationError, match=f"{variable}: .*set {meant} instead"):
        Database()


@pytest.mark.parametrize("variable", ["DB_CLASSLIST", "DB_MASSLOAD", "DB_HOST", "DB_TLS"])
def test_a_variable_that_says_nothing_of_tls_is_not_refused_as_one(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "disable")
    DatabaseSettings()


@pytest.mark.parametrize(
    ("line", "meant"),
    [("DB_SSLMODE=verify-full", "DB_TLS"), ("DATABASE_SSLROOTCERT=ca.pem", "DB_TLS_CA_FILE")],
)
def test_a_guessed_tls_variable_in_a_dotenv_file_is_refused_naming_the_one_to_set(
    tmp_path: Path, line: str, meant: str
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"DATABASE_URL=postgresql+asyncpg://app@db.internal/app\n{line}\n")
    name = line.partition("=")[0]
    with pytest.raises(ConfigurationError, match=f"{name} .*set {meant} instead"):
        DatabaseSettings(_env_file=dotenv)


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize(
    "field", ["tls_ca_file", "tls_cert_file", "tls_key_file", "tls_key_password"]
)
def test_an_empty_tls_variable_is_refused_as_empty(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    # Read as a path, "" would be "." and refused as ". is not a file".
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@db.internal/app")
    monkeypatch.setenv("DB_TLS", "verify-full")
    variable = f"DB_{field.upper()}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=rf"{variable} \({field}\): is empty") as caught:
        DatabaseSettings()
    assert ". is not a file" not in str(caught.value)


def test_nested_secret_connect_args_are_hidden_and_reach_the_driver() -> None:
    settings = DatabaseSettings(
        url="postgresql+asyncpg://app@db/app",
        connect_args={"server_settings": {"app.auth_token": SECRET, "search_path": "x"}},
    )
    assert SECRET not in repr(settings)
    assert SECRET not in settings.model_dump_json()
    assert settings.driver_connect_args["server_settings"] == {
        "app.auth_token": SECRET,
        "search_path": "x",
    }


def test_workers_default_to_web_concurrency_else_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DatabaseSettings().workers == 1
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert DatabaseSettings().workers == 4
    monkeypatch.setenv("DB_WORKERS", "3")
    assert DatabaseSettings().workers == 3
    assert DatabaseSettings(workers=2).workers == 2


@pytest.mark.parametrize("value", ["0", "-2", "many", "100000"])
@pytest.mark.parametrize("variable", ["DB_WORKERS", "WEB_CONCURRENCY"])
def test_an_impossible_worker_count_is_refused_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=r"DB_WORKERS \(or WEB_CONCURRENCY\) \(workers\)"):
        DatabaseSettings()


def test_the_budget_check_refuses_by_default_and_takes_only_its_three_modes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert DatabaseSettings().budget_check == "refuse"
    monkeypatch.setenv("DB_BUDGET_CHECK", "warn")
    assert DatabaseSettings().budget_check == "warn"
    monkeypatch.setenv("DB_BUDGET_CHECK", "ignore")
    with pytest.raises(ConfigurationError, match="DB_BUDGET_CHECK"):
        DatabaseSettings()


def test_pgbouncer_mode_is_read_from_the_environment_and_refused_off_postgresql(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@pgbouncer.internal:6432/app")
    monkeypatch.setenv("DB_PGBOUNCER", "transaction")
    assert DatabaseSettings().pgbouncer == "transaction"
    with pytest.raises(ConfigurationError, match=r"DB_PGBOUNCER .* applies to PostgreSQL only"):
        DatabaseSettings(url="sqlite+aiosqlite:///./data/app.db")
    with pytest.raises(ConfigurationError, match=r"DB_PGBOUNCER \(pgbouncer\)"):
        DatabaseSettings(pgbouncer="statement")


def test_pgbouncer_transaction_mode_owns_the_statement_cache_and_connection_class() -> None:
    url = "postgresql+asyncpg://app@pgbouncer.internal:6432/app"
    with pytest.raises(ConfigurationError, match="statement_cache_size is set by"):
        Database(url=url, pgbouncer="transaction", connect_args={"statement_cache_size": 10})
    # Off, the argument is the user's to give.
    Database(url=url, connect_args={"statement_cache_size": 10})


def test_server_settings_are_refused_through_pgbouncer() -> None:
    url = "postgresql+asyncpg://app@pgbouncer.internal:6432/app"
    extra = {"server_settings": {"search_path": "app"}}
    with pytest.raises(ConfigurationError, match="PgBouncer refuses server_settings"):
        DatabaseSettings(url=url, pgbouncer="session", connect_args=extra)
    DatabaseSettings(url=url, connect_args=extra)


@pytest.mark.parametrize("variable", ["URL", "url", "DB_URL"])
def test_only_database_url_picks_the_database_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "sqlite+aiosqlite:///./other-program.db")
    assert DatabaseSettings().sqlalchemy_url.database == "./data/app.db"
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app@db.internal/app")
    assert DatabaseSettings().sqlalchemy_url.host == "db.internal"
    # The keyword stays the way to give it in code.
    assert DatabaseSettings(url="sqlite+aiosqlite:///./given.db").sqlalchemy_url.database == (
        "./given.db"
    )


@pytest.mark.parametrize("variable", ["URL", "url", "DB_URL"])
def test_only_database_url_picks_the_database_from_a_dotenv_file(
    tmp_path: Path, variable: str
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        f"{variable}=postgresql+asyncpg://app:pw@other-program.invalid/prod\n"
        "WORKERS=64\nDB_PASSWORD=from-compose\n"
    )
    read = DatabaseSettings(_env_file=dotenv)
    assert read.sqlalchemy_url.database == "./data/app.db"
    assert (read.workers, read.password) == (1, None)
    dotenv.write_text(
        "DATABASE_URL=postgresql+asyncpg://app@db.internal/app\nDB_WORKERS=3\nDB_POOL_SIZE=4\n"
    )
    read = DatabaseSettings(_env_file=dotenv)
    assert (read.sqlalchemy_url.host, read.workers, read.pool_size) == ("db.internal", 3, 4)


def test_a_dotenv_file_of_model_config_reads_the_database_from_database_url_only(
    tmp_path: Path,
) -> None:
    dotenv = tmp_path / "app.env"
    dotenv.write_text("URL=sqlite+aiosqlite:///./other.db\nWEB_CONCURRENCY=2\n")

    class AppSettings(DatabaseSettings):
        model_config = SettingsConfigDict(env_file=dotenv)

    assert AppSettings().sqlalchemy_url.database == "./data/app.db"
    assert AppSettings().workers == 2
    dotenv.write_text("DATABASE_URL=sqlite+aiosqlite:///./chosen.db\nDB_POOL_SIZ=3\n")
    with pytest.raises(ConfigurationError, match="DB_POOL_SIZ"):
        AppSettings()
    dotenv.write_text("DATABASE_URL=sqlite+aiosqlite:///./chosen.db\n")
    assert AppSettings().sqlalchemy_url.database == "./chosen.db"


@pytest.mark.parametrize("given_in", ["environment", "dotenv"])
@pytest.mark.parametrize("fallback_in", ["environment", "dotenv"])
def test_db_workers_wins_over_web_concurrency_wherever_each_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given_in: str, fallback_in: str
) -> None:
    # The platform sets WEB_CONCURRENCY for one replica; DB_WORKERS counts them all, and
    # the budget check must count that.
    dotenv = tmp_path / ".env"
    lines = []
    for variable, value, where in (
        ("DB_WORKERS", "8", given_in),
        ("WEB_CONCURRENCY", "2", fallback_in),
    ):
        if where == "environment":
            monkeypatch.setenv(variable, value)
        else:
            lines.append(f"{variable}={value}\n")
    dotenv.write_text("".join(lines))
    assert DatabaseSettings(_env_file=dotenv).workers == 8


def test_the_environment_wins_over_a_dotenv_file_for_the_same_worker_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("DB_WORKERS=8\nWEB_CONCURRENCY=5\n")
    monkeypatch.setenv("DB_WORKERS", "3")
    assert DatabaseSettings(_env_file=dotenv).workers == 3
    monkeypatch.delenv("DB_WORKERS")
    monkeypatch.setenv("WEB_CONCURRENCY", "2")
    assert DatabaseSettings(_env_file=dotenv).workers == 8
    dotenv.write_text("WEB_CONCURRENCY=5\n")
    assert DatabaseSettings(_env_file=dotenv).workers == 2


def test_an_unrelated_workers_variable_is_not_a_worker_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKERS", "7")
    assert DatabaseSettings().workers == 1


# Characters a URL gives meaning to, beside some that no error message holds: a run of
# four of them found in a message came from the password.
PASSWORD_CHARACTERS = "0123456789JKWXYZ@/:?#%"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300)
@given(password=st.text(PASSWORD_CHARACTERS, min_size=1, max_size=24))
def test_a_raw_password_is_refused_without_a_trace_or_read_as_the_url_says(
    password: str,
) -> None:
    raw = f"postgresql+asyncpg://app:{password}@db.internal:5432/app"
    try:
        url = DatabaseSettings(url=raw).sqlalchemy_url
    except ConfigurationError as error:
        message = str(error)
        leaked = [password[i : i + 4] for i in range(len(password) - 3)]
        assert not [piece for piece in leaked if piece in message]
        assert "db.internal" not in message
    else:
        # What the URL says: percent-escapes in it are escapes.
        assert (url.password, url.host, url.port, url.database) == (
            unquote(password),
            "db.internal",
            5432,
            "app",
        )
    encoded = f"postgresql+asyncpg://app:{quote(password, safe='')}@db.internal:5432/app"
    assert DatabaseSettings(url=encoded).sqlalchemy_url.password == password


def test_a_password_holding_at_then_slash_is_refused_naming_none_of_it() -> None:
    raw = "postgresql+asyncpg://app:Tr0ub4dor@Horse/Battery9@127.0.0.1:5432/app"
    with pytest.raises(ConfigurationError, match="percent-encoded as %40") as caught:
        DatabaseSettings(url=raw)
    for piece in ("Tr0ub4dor", "Horse", "Battery9", "127.0.0.1", "5432"):
        assert piece not in str(caught.value)


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_a_port_out_of_range_is_refused(port: str) -> None:
    with pytest.raises(ConfigurationError, match="port out of range"):
        DatabaseSettings(url=f"postgresql+asyncpg://app@db.internal:{port}/app")
    assert DatabaseSettings(url="postgresql+asyncpg://app@db.internal:65535/app")


def test_a_sqlite_file_name_may_hold_an_at_sign() -> None:
    url = DatabaseSettings(url="sqlite+aiosqlite:///./data/app@2.db").sqlalchemy_url
    assert url.database == "./data/app@2.db"


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("postgresql+asyncpg://app@db/app?prepared_stmt_cache=0", "did you mean prepared_st"),
        ("postgresql+asyncpg://app@db/app?statement_cache_size=0", "as a number in connect_args"),
        ("mysql+asyncmy://app@db/app?charset=utf8mb4x", "charset=utf8mb4x"),
        ("mysql+asyncmy://app@db/app?charst=utf8mb4", "did you mean charset"),
    ],
)
def test_a_query_parameter_that_would_fail_every_connection_is_refused_at_construction(
    url: str, refusal: str
) -> None:
    with pytest.raises(ConfigurationError, match=refusal):
        Database(url=url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app@db/app?prepared_statement_cache_size=0",
        "postgresql+asyncpg://app@/app?host=/var/run/postgresql&target_session_attrs=primary",
        "mysql+asyncmy://app@db/app?charset=utf8mb4&unix_socket=/run/mysqld/mysqld.sock",
    ],
)
def test_query_parameters_the_driver_takes_are_kept(url: str) -> None:
    assert Database(url=url).settings.sqlalchemy_url.query
