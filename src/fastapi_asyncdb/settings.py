"""One typed settings object, read from the environment or given in code, validated at once."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import URL, make_url

from .database_url import check_url_text
from .environment import (
    CODE_ONLY,
    DotEnvWithoutCodeOnly,
    EnvironmentWithoutCodeOnly,
    explain,
    refuse_tls_lookalikes,
    warn_of_misspelled_variables,
)
from .errors import ConfigurationError
from .redaction import is_secret_query_key, mask_url
from .tls import TlsMode, check_tls

__all__ = ["DatabaseSettings"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "sqlite+aiosqlite:///./data/app.db"

# Longest time a setting may hold: PostgreSQL keeps its limits as milliseconds in a
# 32-bit integer (about 24 days), and no timeout is meant to be longer.
MAX_SECONDS = 2_147_483
# Shortest: PostgreSQL counts its limits in milliseconds, and MariaDB rounds a
# max_statement_time of 1e-07 to 0, which is no limit at all.
MIN_SECONDS = 0.001
# Far more processes than one server serves; a larger value is a typo.
MAX_WORKERS = 10_000
# Connections in one pool of one process: no server serves more; a larger value is a typo.
MAX_POOL_SIZE = 10_000
# An hour: a client told to come back later than that has given up long before.
MAX_RETRY_AFTER = 3_600
# The words that turn off a setting that can be off, given as text (the environment).
OFF_WORDS = ("none", "off")


def _not_under_a_millisecond(seconds: float) -> float:
    if 0 < seconds < MIN_SECONDS:
        raise ValueError(
            f"is under 1 ms: times are in seconds, and the shortest is {MIN_SECONDS:g} "
            "(a server would round a shorter limit to 0, which is none at all)"
        )
    return seconds


def _no_off_word(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in (*OFF_WORDS, "null", ""):
        raise ValueError("cannot be turned off; give a number of seconds")
    return value


def _off_word_is_none(value: object) -> object:
    if value == 0 and not isinstance(value, bool):
        value = "0"
    if not isinstance(value, str):
        return value
    word = value.strip().lower()
    if word in OFF_WORDS:
        return None
    if word == "":
        # An empty variable is more often a template's blank than a wish for no limit.
        raise ValueError("is empty; give a number of seconds, or none (or off) to turn it off")
    if word == "null" or _is_zero(word):
        # 0 is PostgreSQL's own word for no limit; here that is said in words.
        raise ValueError("give a number of seconds, or none (or off) to turn it off")
    return value


def _is_zero(word: str) -> bool:
    try:
        return float(word) == 0
    except ValueError:
        return False


Seconds: TypeAlias = Annotated[
    float,
    BeforeValidator(_no_off_word),
    Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False),
    AfterValidator(_not_under_a_millisecond),
]
"""A duration in seconds: finite, from ``MIN_SECONDS`` to ``MAX_SECONDS``."""
SecondsOrZero: TypeAlias = Annotated[
    float,
    BeforeValidator(_no_off_word),
    Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False),
    AfterValidator(_not_under_a_millisecond),
]
"""As ``Seconds``, or 0."""
SecondsOrOff: TypeAlias = Annotated[Seconds | None, BeforeValidator(_off_word_is_none)]
"""As ``Seconds``, or None (``none`` or ``off`` as text): the limit is turned off."""
# A threshold compared here with a measured time, never sent as a limit: nothing rounds
# it away, and a tiny one means "every time" (log every statement, ping every checkout).
Threshold: TypeAlias = Annotated[
    float, BeforeValidator(_no_off_word), Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)
]
PoolSize: TypeAlias = Annotated[int, Field(ge=1, le=MAX_POOL_SIZE)]
Overflow: TypeAlias = Annotated[int, Field(ge=0, le=MAX_POOL_SIZE)]

PasswordProvider = Callable[[], str | Awaitable[str]]
"""Returns the password (or token) for a new connection; sync or async."""
AsyncCreator = Callable[..., Awaitable[Any]]
"""Makes a driver connection from the library's connect arguments (keywords)."""


class DatabaseSettings(BaseSettings):
    """Every knob of the engine, the pools and the timeouts.

    From the environment: ``DATABASE_URL`` and ``DB_<NAME>`` for each other field
    (``DB_POOL_SIZE``, ``DB_TLS``, ...). From code: the field names as keywords.
    Limits are in seconds, from 1 ms. A limit that can be turned off is turned off by
    ``None`` (``none`` or ``off`` in the environment); only do that knowingly.

    ``ssl_context``, ``connect_args``, ``password``, ``async_creator`` and the JSON
    functions are set in code only (docs/tls.md): never read from the environment,
    never printed, and refused where they would override what another setting controls.
    """

    model_config = SettingsConfigDict(
        env_prefix="DB_",
        populate_by_name=True,
        hide_input_in_errors=True,
        extra="forbid",
        frozen=True,
        arbitrary_types_allowed=True,
    )

    url: SecretStr = Field(
        default=SecretStr(DEFAULT_URL),
        validation_alias=AliasChoices("url", "DATABASE_URL"),
        repr=False,
        description="SQLAlchemy URL with an async driver; the default is a SQLite file in ./data.",
    )
    pool_class: Literal["AsyncAdaptedQueuePool", "NullPool"] = "AsyncAdaptedQueuePool"
    pool_size: PoolSize = 10
    max_overflow: Overflow = 5
    read_pool_size: PoolSize | None = Field(
        default=None, description="Connections kept for read sessions; default: pool_size."
    )
    read_max_overflow: Overflow | None = Field(
        default=None, description="Extra read connections under load; default: max_overflow."
    )
    pool_timeout: Seconds = Field(
        default=5.0, description="Longest wait for a connection before a 503 (acquire timeout)."
    )
    pool_recycle: SecondsOrOff = 1800.0
    pool_pre_ping: bool = True
    pre_ping_after_idle: Threshold = Field(
        default=1.0,
        description="Ping only connections idle at least this long; 0 pings at every checkout.",
    )
    connect_timeout: Seconds = 5.0
    command_timeout: SecondsOrOff = Field(
        default=20.0, description="Client-side limit on each command on the wire."
    )
    statement_timeout: SecondsOrOff = Field(
        default=15.0, description="Server-side limit on each statement (PostgreSQL, MariaDB)."
    )
    idle_in_transaction_timeout: SecondsOrOff = Field(
        default=30.0, description="Server ends a session left idle inside a transaction."
    )
    client_connection_check_interval: SecondsOrOff = Field(
        default=1.0,
        description="PostgreSQL 14+: stop a query whose client has gone (cancelled request).",
    )
    unavailable_retry_after: Annotated[int, Field(ge=1, le=MAX_RETRY_AFTER)] = Field(
        default=1, description="Seconds announced in Retry-After when the database is unavailable."
    )
    health_timeout: Seconds = Field(
        default=2.0, description="Limit on the readiness ping and on pre-pings of idle connections."
    )
    drain_timeout: SecondsOrZero = Field(
        default=5.0,
        description="At shutdown, how long units of work in flight get to end before they are "
        "cancelled and rolled back; 0 cancels them at once.",
    )
    pool_name: str = Field(
        default="default",
        pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,62}$",
        description="The pool label of this database's metrics (letters, digits, _ . : -).",
    )
    metrics: bool = Field(
        default=True,
        description="Count units of work, waits and failures for the metrics; the pool "
        "gauges, read at scrape time, work either way.",
    )
    slow_statement_threshold: Annotated[
        Annotated[Threshold, Field(gt=0)] | None, BeforeValidator(_off_word_is_none)
    ] = Field(
        default=None,
        description="Log each statement that takes at least this long (WARNING, logger "
        "fastapi_asyncdb.statements), without its values; None: no such log.",
    )
    echo: bool = False
    echo_pool: bool = False
    hide_parameters: bool = Field(
        default=True, description="Keep bound parameter values out of logs and exceptions."
    )
    application_name: str = "fastapi-asyncdb"
    pgbouncer: Literal["off", "transaction", "session"] = Field(
        default="off",
        description="PostgreSQL behind PgBouncer in this pool mode: no startup parameters, "
        "limits set per transaction or per session instead (docs/pgbouncer.md).",
    )

    # -- workers and the connection budget (docs/operating.md) -------------------------
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = Field(
        default=1,
        validation_alias=AliasChoices("DB_WORKERS", "WEB_CONCURRENCY"),
        description="Processes that each open these pools against the server "
        "(default: WEB_CONCURRENCY, else 1); the startup check counts them.",
    )
    budget_check: Literal["refuse", "warn", "off"] = Field(
        default="refuse",
        description="At startup, when workers x pools exceed what the server allows: refuse "
        "to start (ConfigurationError), log a warning, or do not check.",
    )

    # -- TLS (docs/tls.md) --------------------------------------------------------------
    tls: TlsMode | None = Field(
        default=None,
        description="disable, require (encrypts, verifies nothing), verify-ca or verify-full; "
        "unset: no TLS, unless the URL asks for it.",
    )
    tls_ca_file: Path | None = Field(
        default=None, description="CA that signed the server's certificate; default: the system's."
    )
    tls_cert_file: Path | None = Field(default=None, description="Client certificate (PEM).")
    tls_key_file: Path | None = Field(
        default=None, description="Client key (PEM); default: in the certificate file."
    )
    tls_key_password: SecretStr | None = Field(
        default=None, repr=False, description="Password of an encrypted client key."
    )

    # -- in code only: the escape hatch for managed databases (docs/tls.md) ------------
    ssl_context: ssl.SSLContext | None = Field(
        default=None, repr=False, description="A TLS context built in code, used as it is."
    )
    connect_args: dict[str, Any] = Field(
        default_factory=dict,
        repr=False,
        description="More driver connect arguments; those the settings control are refused.",
    )
    password: SecretStr | PasswordProvider | None = Field(
        default=None,
        repr=False,
        description="The password, or a callable returning it for each new connection.",
    )
    async_creator: AsyncCreator | None = Field(
        default=None,
        repr=False,
        description="Makes each driver connection from the keyword arguments it is given.",
    )
    json_serializer: Callable[[Any], str] | None = Field(default=None, repr=False)
    json_deserializer: Callable[[str], Any] | None = Field(default=None, repr=False)

    def __init__(self, **values: Any) -> None:
        refuse_tls_lookalikes(os.environ)
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigurationError(explain(error)) from None
        warn_of_misspelled_variables(os.environ, type(self).model_fields)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        check_url_text(value.get_secret_value())
        return value

    @field_validator(
        "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_key_password", mode="before"
    )
    @classmethod
    def _refuse_empty_tls_value(cls, value: object, info: ValidationInfo) -> object:
        # An empty path would become "." (the current directory), and the refusal
        # would then speak of a "." nobody wrote; an empty variable is a blank left in a
        # template.
        if isinstance(value, str) and not value.strip():
            what = "the key's password" if info.field_name == "tls_key_password" else "a path"
            raise ValueError(f"is empty; give {what}, or unset it")
        return value

    @field_validator("connect_args")
    @classmethod
    def _hide_secret_connect_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Kept as SecretStr, so dumps and reprs of the settings never show them; in
        # nested mappings too (server_settings={"app.auth_token": ...}).
        return _hide_secrets(value)

    @model_validator(mode="after")
    def _check_connections(self) -> DatabaseSettings:
        check_tls(self)
        url = self.sqlalchemy_url
        if self.pgbouncer != "off" and url.get_backend_name() != "postgresql":
            raise ValueError("DB_PGBOUNCER (pgbouncer) applies to PostgreSQL only")
        if self.pgbouncer != "off" and self.connect_args.get("server_settings"):
            raise ValueError(
                "connect_args=: PgBouncer refuses server_settings at login, or drops them "
                "unapplied (DB_PGBOUNCER); set them on the role or database (ALTER ROLE ... SET)"
            )
        if self.password is not None and (url.password is not None or "password" in url.query):
            raise ValueError("password=: DATABASE_URL carries a password too; give it in one place")
        return self

    @field_serializer(*CODE_ONLY[:1], *CODE_ONLY[2:], when_used="json")
    def _describe_code_only(self, value: object) -> str | None:
        return None if value is None else f"<{type(value).__name__}>"

    @field_serializer("connect_args", when_used="json")
    def _describe_connect_args(self, value: dict[str, Any]) -> dict[str, Any]:
        return _describe(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environment = EnvironmentWithoutCodeOnly(settings_cls)
        dotenv = DotEnvWithoutCodeOnly.of(dotenv_settings)
        if isinstance(dotenv, DotEnvSettingsSource):
            # DB_WORKERS in the .env file must win over WEB_CONCURRENCY, which the
            # platform sets in the environment: the environment's source decides.
            environment.dotenv_vars = dotenv.env_vars
        return (init_settings, environment, dotenv, file_secret_settings)

    @field_validator("pool_class", mode="before")
    @classmethod
    def _check_pool_class(cls, value: object) -> object:
        if value in ("QueuePool", "SingletonThreadPool", "StaticPool"):
            raise ValueError(
                f"{value} does not work with asyncio; use AsyncAdaptedQueuePool (the default) "
                "or NullPool"
            )
        return value

    @property
    def sqlalchemy_url(self) -> URL:
        return make_url(self.url.get_secret_value())

    @property
    def masked_url(self) -> str:
        return mask_url(self.sqlalchemy_url)

    @property
    def effective_read_pool_size(self) -> int:
        return self.pool_size if self.read_pool_size is None else self.read_pool_size

    @property
    def effective_read_max_overflow(self) -> int:
        return self.max_overflow if self.read_max_overflow is None else self.read_max_overflow

    @property
    def driver_connect_args(self) -> dict[str, Any]:
        """``connect_args`` as the driver takes them: secrets in clear."""
        return _reveal(self.connect_args)

    def __repr_args__(self) -> Any:
        yield "url", self.masked_url
        yield from super().__repr_args__()
        # Code-only values by kind: a context, a callable or a connect argument may hold
        # a secret.
        if self.connect_args:
            yield "connect_args", sorted(self.connect_args)
        for name in ("ssl_context", "password", "async_creator"):
            value = getattr(self, name)
            if value is not None:
                yield name, f"<{type(value).__name__}>"


def _hide_secrets(arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _hide_secrets(item)
        if isinstance(item, Mapping)
        else SecretStr(item)
        if isinstance(item, str) and is_secret_query_key(key)
        else item
        for key, item in arguments.items()
    }


def _describe(arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _describe(item)
        if isinstance(item, Mapping)
        else "***"
        if isinstance(item, SecretStr)
        else repr(item)
        for key, item in arguments.items()
    }


def _reveal(arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: _reveal(item)
        if isinstance(item, Mapping)
        else item.get_secret_value()
        if isinstance(item, SecretStr)
        else item
        for key, item in arguments.items()
    }
