"""One typed settings object, read from the environment or given in code, validated at once."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError
from .redaction import mask_url

__all__ = ["DatabaseSettings"]

DEFAULT_URL = "sqlite+aiosqlite:///./data/app.db"


class DatabaseSettings(BaseSettings):
    """Every knob of the engine, the pools and the timeouts.

    From the environment: ``DATABASE_URL`` and ``DB_<NAME>`` for each other field
    (``DB_POOL_SIZE``, ``DB_POOL_TIMEOUT``, ...). From code: the field names as keywords.
    Times are in seconds. A timeout of ``None`` disables it; only do that knowingly.
    """

    model_config = SettingsConfigDict(
        env_prefix="DB_",
        populate_by_name=True,
        hide_input_in_errors=True,
        extra="forbid",
        frozen=True,
    )

    url: SecretStr = Field(
        default=SecretStr(DEFAULT_URL),
        validation_alias=AliasChoices("url", "DATABASE_URL"),
        repr=False,
        description="SQLAlchemy URL with an async driver; the default is a SQLite file in ./data.",
    )
    pool_class: Literal["AsyncAdaptedQueuePool", "NullPool"] = "AsyncAdaptedQueuePool"
    pool_size: PositiveInt = 10
    max_overflow: NonNegativeInt = 5
    read_pool_size: PositiveInt | None = Field(
        default=None, description="Connections kept for read sessions; default: pool_size."
    )
    read_max_overflow: NonNegativeInt | None = Field(
        default=None, description="Extra read connections under load; default: max_overflow."
    )
    pool_timeout: PositiveFloat = Field(
        default=5.0, description="Longest wait for a connection before a 503 (acquire timeout)."
    )
    pool_recycle: PositiveFloat | None = 1800.0
    pool_pre_ping: bool = True
    pre_ping_after_idle: float = Field(
        default=1.0,
        ge=0,
        description="Ping only connections idle at least this long; 0 pings at every checkout.",
    )
    connect_timeout: PositiveFloat = 5.0
    command_timeout: PositiveFloat | None = Field(
        default=20.0, description="Client-side limit on each command on the wire."
    )
    statement_timeout: PositiveFloat | None = Field(
        default=15.0, description="Server-side limit on each statement (PostgreSQL, MariaDB)."
    )
    idle_in_transaction_timeout: PositiveFloat | None = Field(
        default=30.0, description="Server ends a session left idle inside a transaction."
    )
    client_connection_check_interval: PositiveFloat | None = Field(
        default=1.0,
        description="PostgreSQL 14+: stop a query whose client has gone (cancelled request).",
    )
    unavailable_retry_after: PositiveInt = Field(
        default=1, description="Seconds announced in Retry-After when the database is unavailable."
    )
    health_timeout: PositiveFloat = Field(
        default=2.0, description="Limit on the readiness ping and on pre-pings of idle connections."
    )
    drain_timeout: NonNegativeFloat = Field(
        default=5.0,
        description="At shutdown, how long units of work in flight get to end before they are "
        "cancelled and rolled back; 0 cancels them at once.",
    )
    echo: bool = False
    echo_pool: bool = False
    hide_parameters: bool = Field(
        default=True, description="Keep bound parameter values out of logs and exceptions."
    )
    application_name: str = "fastapi-asyncdb"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigurationError(_explain(error)) from None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        _check_async_url(value.get_secret_value())
        return value

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

    def __repr_args__(self) -> Any:
        yield "url", self.masked_url
        yield from super().__repr_args__()


def _check_async_url(raw: str) -> None:
    # Whether a backend and its driver can use the URL is the backends' to judge, when
    # the Database is constructed; here only that it is a URL at all.
    try:
        make_url(raw)
    except ArgumentError:
        raise ValueError(
            "is not a valid SQLAlchemy URL; expected e.g. postgresql+asyncpg://user@host/db"
        ) from None


def _env_name(field: str) -> str:
    return "DATABASE_URL" if field == "url" else f"DB_{field.upper()}"


def _explain(error: ValidationError) -> str:
    """Name each offending setting by its environment variable, without echoing its value."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        field = str(item["loc"][0]) if item["loc"] else "?"
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "is not a setting of fastapi-asyncdb; check the spelling"
        lines.append(f"{_env_name(field)} ({field}): {message}")
    return "Invalid database settings:\n  " + "\n  ".join(lines)
