"""Where settings come from: the environment and ``.env`` files, read by the names this
package owns, and what a misspelled or guessed name gets.

Settings given in code are not read here. Code-only settings (objects, callables) have
no environment form; an aliased setting is read only from its own names; a variable
that looks like a TLS setting but is none is refused (ignored, it would leave a
connection in plaintext); another ``DB_*`` name close to a setting gets a warning.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource, PydanticBaseSettingsSource

from .errors import ConfigurationError

__all__ = [
    "CODE_ONLY",
    "ENVIRONMENT_NAMES",
    "DotEnvWithoutCodeOnly",
    "EnvironmentWithoutCodeOnly",
    "env_name",
    "explain",
    "refuse_tls_lookalikes",
    "warn_of_misspelled_variables",
]

logger = logging.getLogger(__name__)

# Set in code only: objects, callables and driver arguments have no environment form.
CODE_ONLY = (
    "ssl_context",
    "connect_args",
    "password",
    "async_creator",
    "json_serializer",
    "json_deserializer",
)


# The only variables an aliased setting is read from, in order of precedence.
ENVIRONMENT_NAMES = {"url": ("DATABASE_URL",), "workers": ("DB_WORKERS", "WEB_CONCURRENCY")}


class OwnNamesOnly(EnvSettingsSource):
    """Variables (of the environment or a ``.env`` file), minus the code-only settings
    (``DB_PASSWORD`` of a compose file stays unread rather than becoming a password
    nobody asked for), and an aliased setting read only from its own names."""

    dotenv_vars: Mapping[str, str | None] = MappingProxyType({})
    """A ``.env`` file's variables, for the aliases the environment does not set."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in CODE_ONLY:
            return None, field_name, False
        names = ENVIRONMENT_NAMES.get(field_name)
        if names is None:
            return super().get_field_value(field, field_name)
        # pydantic-settings would also read the bare field name (``URL``, ``WORKERS``)
        # and the prefixed one (``DB_URL``): an unrelated variable of another program
        # would then pick the database.
        # Each name in the environment, then in the .env file, before the next name:
        # DB_WORKERS wherever it is given beats WEB_CONCURRENCY.
        for name in names:
            key = name if self.case_sensitive else name.lower()
            for variables in (self.env_vars, self.dotenv_vars):
                value = variables.get(key)
                if value is not None:
                    return value, name, False
        return None, field_name, False


class EnvironmentWithoutCodeOnly(OwnNamesOnly):
    """The environment, read as :class:`OwnNamesOnly` says."""


class DotEnvWithoutCodeOnly(OwnNamesOnly, DotEnvSettingsSource):
    """A ``.env`` file, read as :class:`OwnNamesOnly` says."""

    @classmethod
    def of(cls, source: PydanticBaseSettingsSource) -> PydanticBaseSettingsSource:
        if not isinstance(source, DotEnvSettingsSource):
            return source
        # The same source (its file, as ``_env_file=`` or model_config chose, already
        # read), with this class's reading of it.
        own = cls.__new__(cls)
        own.__dict__.update(source.__dict__)
        return own


def env_name(field: str) -> str:
    if field == "url":
        return "DATABASE_URL"
    if field == "workers":
        # The value may have come from either; both are named.
        return "DB_WORKERS (or WEB_CONCURRENCY)"
    # A key a .env file gave keeps the prefix it was written with.
    if field.lower().startswith(("db_", "database_")):
        return field.upper()
    return f"DB_{field.upper()}"


# The only variables that ask for TLS; anything else that looks like one is a mistake.
TLS_VARIABLES = (
    "DB_TLS",
    "DB_TLS_CA_FILE",
    "DB_TLS_CERT_FILE",
    "DB_TLS_KEY_FILE",
    "DB_TLS_KEY_PASSWORD",
)
# SSL or TLS as a word of the name (DB_SSLMODE, DB_USE_SSL, DATABASE_PGSSLMODE), not
# inside another word (DB_CLASSLIST).
_MENTIONS_TLS = re.compile(r"(?:^|_|PG)(?:SSL|TLS)|(?:SSL|TLS)(?:_|$)")
_MENTIONS_CA = re.compile(r"ROOT|(?:^|_|SSL|TLS)CA(?:_|$|FILE|CERT|PATH|BUNDLE)")


def _tls_variable_meant(name: str) -> str | None:
    """The ``DB_TLS*`` variable that ``name``, not one of them, was meant to be; None if
    it says nothing of TLS."""
    upper = name.upper()
    prefix = next((p for p in ("DB_", "DATABASE_") if upper.startswith(p)), None)
    if prefix is None or upper in TLS_VARIABLES:
        return None
    rest = upper.removeprefix(prefix)
    if not _MENTIONS_TLS.search(rest):
        return None
    if "PASS" in rest:
        return "DB_TLS_KEY_PASSWORD"
    if _MENTIONS_CA.search(rest):
        return "DB_TLS_CA_FILE"
    if "KEY" in rest:
        return "DB_TLS_KEY_FILE"
    if "CERT" in rest:
        return "DB_TLS_CERT_FILE"
    return "DB_TLS"


def refuse_tls_lookalikes(environment: Mapping[str, str]) -> None:
    """Refuse ``DB_SSLMODE``, ``DB_TLS_MODE``, ``DATABASE_SSLMODE``...: ignored, each
    would leave the connection in plaintext (or unverified) while its author believes it
    encrypted, as ``PGSSLMODE`` would; a warning in a log is read too late."""
    lines = [
        f"{name}: is not a setting of fastapi-asyncdb (TLS is set by DB_TLS and DB_TLS_* "
        f"only); set {meant} instead (docs/tls.md)"
        for name in sorted(environment)
        if (meant := _tls_variable_meant(name)) is not None
    ]
    if lines:
        raise ConfigurationError("Invalid database settings:\n  " + "\n  ".join(lines))


def warn_of_misspelled_variables(environment: Mapping[str, str], fields: Iterable[str]) -> None:
    """Name ``DB_*`` variables that look like a setting but are none of them.

    The environment also holds other programs' ``DB_*`` variables (``DB_HOST`` for a
    script, say), so unknown names cannot be refused; but ``DB_STATEMENT_TIMOUT``,
    silently ignored, would leave a protection off. (Those that mention TLS are refused
    before this: see ``refuse_tls_lookalikes``.)
    """
    known = [
        "DB_WORKERS" if name == "workers" else env_name(name)
        for name in fields
        if name not in CODE_ONLY
    ]
    for name in environment:
        upper = name.upper()
        if not upper.startswith("DB_") or upper in known:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
        sibling = [setting for setting in known if upper.startswith(f"{setting}_")]
        if close or sibling:
            logger.warning(
                "%s is not a setting of fastapi-asyncdb, and is ignored; did you mean %s?",
                name,
                (close or sibling)[0],
            )


def explain(error: ValidationError) -> str:
    """Name each offending setting by its environment variable, without echoing its value."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        if not item["loc"]:
            lines.append(message)  # a check across settings names them itself
            continue
        field = str(item["loc"][0])
        # An error's location is the alias: pydantic names the first one, whichever gave it.
        field = {"DB_WORKERS": "workers", "WEB_CONCURRENCY": "workers"}.get(field, field)
        if item["type"] == "extra_forbidden":
            meant = _tls_variable_meant(field)
            message = "is not a setting of fastapi-asyncdb; " + (
                "check the spelling" if meant is None else f"set {meant} instead (docs/tls.md)"
            )
        name = f"{field}=" if field in CODE_ONLY else f"{env_name(field)} ({field})"
        lines.append(f"{name}: {message}")
    return "Invalid database settings:\n  " + "\n  ".join(lines)
