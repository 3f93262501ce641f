"""TLS to the server: what was asked for, checked at startup, and the ``SSLContext`` it needs.

TLS is asked for in one place: the ``DB_TLS*`` settings, a context built in code
(``ssl_context=``), or the URL's own TLS parameters (``?sslmode=verify-full&sslrootcert=``
on PostgreSQL, ``?ssl_ca=`` on MySQL/MariaDB), translated into the same request. Two
places at once, a mode that falls back to plaintext (``prefer``, ``allow``), or a
parameter this module cannot honour is refused, so what runs is what was asked for.

The drivers get a context, never a mode string: asyncpg's modes fall back to plaintext
(``prefer``) and read ``PGSSL*`` from the environment; with a context they do neither.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from pydantic import SecretStr
from sqlalchemy.engine import URL

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .settings import DatabaseSettings

__all__ = [
    "TLS_MODES",
    "TlsMode",
    "TlsRequest",
    "build_context",
    "check_tls",
    "connect_context",
    "context_mode",
    "refuse_unread_url_tls",
    "tls_request",
    "url_without_tls",
]

TlsMode = Literal["disable", "require", "verify-ca", "verify-full"]
TLS_MODES: tuple[TlsMode, ...] = ("disable", "require", "verify-ca", "verify-full")
_FALLBACK_MODES = ("prefer", "allow")

# The settings' names, for messages: each names the variable to change.
_SETTING_LABELS = {
    "mode": "DB_TLS (tls)",
    "ca_file": "DB_TLS_CA_FILE (tls_ca_file)",
    "cert_file": "DB_TLS_CERT_FILE (tls_cert_file)",
    "key_file": "DB_TLS_KEY_FILE (tls_key_file)",
    "key_password": "DB_TLS_KEY_PASSWORD (tls_key_password)",
    "context": "ssl_context=",
}

# URL query parameters by backend: libpq's names on PostgreSQL (asyncpg's ``ssl`` too),
# those SQLAlchemy's MySQL dialects read on MySQL/MariaDB (and MySQL's ``ssl_mode``).
_URL_FIELDS = {
    "postgresql": {
        "sslmode": "mode",
        "ssl": "mode",
        "sslrootcert": "ca_file",
        "sslcert": "cert_file",
        "sslkey": "key_file",
        "sslpassword": "key_password",
    },
    "mysql": {
        "ssl_mode": "mode",
        "ssl_check_hostname": "check_hostname",
        "ssl_ca": "ca_file",
        "ssl_cert": "cert_file",
        "ssl_key": "key_file",
    },
}
_URL_FIELDS["mariadb"] = _URL_FIELDS["mysql"]
_MYSQL_MODES = {
    "disabled": "disable",
    "preferred": "prefer",
    "required": "require",
    "verify_ca": "verify-ca",
    "verify_identity": "verify-full",
}
# What would make a PostgreSQL connection ask for TLS if the library did not decide.
_LIBPQ_ENVIRONMENT = {
    "PGSSLMODE": "DB_TLS",
    "PGSSLROOTCERT": "DB_TLS_CA_FILE",
    "PGSSLCERT": "DB_TLS_CERT_FILE",
    "PGSSLKEY": "DB_TLS_KEY_FILE",
}


@dataclass(frozen=True)
class TlsRequest:
    """The TLS a connection must have, wherever it was asked for."""

    mode: TlsMode
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretStr | None = None
    context: ssl.SSLContext | None = None
    """A context built in code; used as it is."""
    labels: Mapping[str, str] | None = field(default=None, compare=False, hash=False)
    """How each field was given (a variable, a URL parameter), for messages."""

    def label(self, field: str) -> str:
        return (self.labels or _SETTING_LABELS)[field]


def tls_request(settings: DatabaseSettings) -> TlsRequest:
    """The TLS the settings ask for: from the settings, the code or the URL; never two."""
    from_url = _request_from_url(settings.sqlalchemy_url)
    given = [
        name
        for name in ("tls", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_key_password")
        if getattr(settings, name) is not None
    ]
    if settings.ssl_context is not None:
        given.append("ssl_context")
    if from_url is not None and given:
        parameters = ", ".join(sorted(_url_tls_keys(settings.sqlalchemy_url)))
        raise ValueError(
            f"DATABASE_URL (url): carries TLS parameters ({parameters}) while "
            f"{_SETTING_LABELS['context'] if given == ['ssl_context'] else 'DB_TLS*'} "
            "is set too; say it in one place: remove them from the URL"
        )
    if from_url is not None:
        return from_url
    context = settings.ssl_context
    if context is not None:
        for name in given:
            if name not in ("tls", "ssl_context"):
                raise ValueError(
                    f"DB_{name.upper()} ({name}): ssl_context= carries its own certificates"
                )
        mode = context_mode(context)
        if mode == "require" and settings.tls not in ("require", "disable"):
            raise ValueError(
                f"{_SETTING_LABELS['context']}: verifies no certificate; say so with "
                "DB_TLS=require, or give a context that verifies (CERT_REQUIRED)"
            )
        return TlsRequest(mode=settings.tls or mode, context=context)
    return TlsRequest(
        mode=settings.tls or "disable",
        ca_file=settings.tls_ca_file,
        cert_file=settings.tls_cert_file,
        key_file=settings.tls_key_file,
        key_password=settings.tls_key_password,
    )


def check_tls(settings: DatabaseSettings) -> None:
    """Raise ``ValueError`` naming the setting if the TLS asked for cannot work as asked.

    Files are loaded here, so a missing CA or a key that does not match its
    certificate fails at startup rather than at the first connection.
    """
    request = tls_request(settings)
    backend = settings.sqlalchemy_url.get_backend_name()
    if request.mode != "disable" or request.context is not None:
        if backend == "sqlite":
            raise ValueError(
                f"{request.label('mode')}: SQLite has no network connection to encrypt; "
                "leave TLS unset"
            )
        _check_transport(settings.sqlalchemy_url, request)
    _check_combination(request)
    if request.mode != "disable" and request.context is None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(request, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{request.label(name)}: {path} is not a file")
        if request.mode != "require" and request.ca_file is None:
            _check_system_trust_store(request)
        _context_for(request)
    if backend == "postgresql" and request.mode == "disable":
        _check_libpq_environment(settings.tls)


def connect_context(settings: DatabaseSettings) -> ssl.SSLContext | None:
    """The context each new connection uses; None when TLS is off.

    Built once for the same files (loading the system's trust store takes tens of
    milliseconds); a file changed on disk gives a new context at the next startup.
    """
    request = tls_request(settings)
    if request.mode == "disable":
        return None
    if request.context is not None:
        return request.context
    try:
        return _context_for(request)
    except ValueError as error:  # a file gone or changed since the settings were checked
        raise ConfigurationError(f"Invalid database settings:\n  {error}") from None


def _context_for(request: TlsRequest) -> ssl.SSLContext:
    files = (request.ca_file, request.cert_file, request.key_file)
    versions = tuple(_version(path) for path in files)
    return _cached_context(request, versions)


def _version(path: Path | None) -> int | None:
    try:
        return None if path is None else path.stat().st_mtime_ns
    except OSError:
        return None  # loading it will say what is wrong


@functools.lru_cache(maxsize=8)
def _cached_context(request: TlsRequest, _versions: tuple[int | None, ...]) -> ssl.SSLContext:
    return build_context(request)


def build_context(request: TlsRequest) -> ssl.SSLContext:
    """A client context with the request's verification, CA and client certificate."""
    if request.mode == "require":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        ca_file = request.ca_file
        context = _load(
            request.label("ca_file"),
            lambda: ssl.create_default_context(cafile=None if ca_file is None else str(ca_file)),
        )
        context.check_hostname = request.mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
    # create_default_context() honours SSLKEYLOGFILE, which writes every session's keys
    # to a file: a debugging aid that must not reach the database's traffic unnoticed.
    context.keylog_filename = None  # type: ignore[assignment]
    if request.cert_file is not None:
        cert_file, key_file = request.cert_file, request.key_file
        secret = request.key_password
        # A password callback always: without one, OpenSSL would ask for the password
        # of an encrypted key on the terminal, and a server would hang at startup.
        password = b"" if secret is None else secret.get_secret_value().encode()
        unreadable = (
            f"no PEM certificate and key, or {request.label('key_password')} is wrong"
            if secret is not None
            else f"no PEM certificate and key, or an encrypted key without "
            f"{request.label('key_password')}"
        )
        _load(
            f"{request.label('cert_file')} / {request.label('key_file')}",
            lambda: context.load_cert_chain(cert_file, key_file, lambda: password),
            unreadable,
        )
    return context


def context_mode(context: ssl.SSLContext) -> TlsMode:
    """What a context verifies, as a mode (a client treats CERT_OPTIONAL as REQUIRED)."""
    if context.verify_mode == ssl.CERT_NONE:
        return "require"
    return "verify-full" if context.check_hostname else "verify-ca"


def url_without_tls(url: URL) -> URL:
    """The URL without the TLS parameters that ``tls_request`` translated."""
    keys = _url_tls_keys(url)
    return url.difference_update_query(keys) if keys else url


# --- checks ----------------------------------------------------------------------


def _check_combination(request: TlsRequest) -> None:
    mode, label = request.mode, request.label
    files = ("ca_file", "cert_file", "key_file", "key_password")
    if request.context is not None:
        if mode == "disable":
            raise ValueError(f"{label('mode')}: is disable, but an ssl_context= is given")
        built = context_mode(request.context)
        if built != mode:
            raise ValueError(
                f"{label('mode')}: asks for {mode}, but the ssl_context= given does {built}"
                + (" (it verifies nothing)" if built == "require" else "")
                + "; make them agree"
            )
        return
    if mode == "disable":
        for name in files:
            if getattr(request, name) is not None:
                raise ValueError(
                    f"{label(name)}: is set, but TLS is off; set {label('mode')} to "
                    "verify-full (or verify-ca) to use it"
                )
    if mode == "require" and request.ca_file is not None:
        raise ValueError(
            f"{label('ca_file')}: a CA only serves to verify the server, which "
            f"{label('mode')}=require does not do; use verify-full (or verify-ca)"
        )
    if request.key_file is not None and request.cert_file is None:
        raise ValueError(f"{label('key_file')}: a client key needs {label('cert_file')}")
    if request.key_password is not None and request.cert_file is None:
        raise ValueError(
            f"{label('key_password')}: there is no client key to decrypt ({label('cert_file')})"
        )


def _check_transport(url: URL, request: TlsRequest) -> None:
    """Drivers skip TLS on a Unix socket without a word: refuse that combination."""
    hosts = url.query.get("host", url.host or "")
    hosts = (hosts,) if isinstance(hosts, str) else hosts
    if any(host.startswith("/") for host in hosts) or "unix_socket" in url.query:
        raise ValueError(
            f"{request.label('mode')}: DATABASE_URL names a Unix socket, where the driver "
            "does not use TLS; connect over TCP, or leave TLS unset"
        )
    if not any(hosts):
        # Without a host the driver picks one itself (PGHOST, then its Unix sockets).
        raise ValueError(
            f"{request.label('mode')}: DATABASE_URL names no host, and the driver would "
            "choose one itself, a Unix socket among them, where it does not use TLS; "
            "name the server's host in DATABASE_URL"
        )


def _check_system_trust_store(request: TlsRequest) -> None:
    paths = ssl.get_default_verify_paths()
    if paths.cafile is None and paths.capath is None:
        raise ValueError(
            f"{request.label('ca_file')}: is not set, and this system has no trust store "
            f"({paths.openssl_cafile}) to verify the server with; install the CA "
            "certificates (ca-certificates) or set it to the server's CA"
        )


def _check_libpq_environment(mode: str | None) -> None:
    """With TLS off, refuse libpq's ``PGSSL*`` variables: whoever set them believes the
    connection encrypted (or verified with that CA), and it is not. ``PGSSLMODE=disable``
    says what happens anyway."""
    asked = sorted(
        name
        for name, value in os.environ.items()
        if name.upper().startswith("PGSSL")
        and value
        and not (name.upper() == "PGSSLMODE" and value.lower() == "disable")
    )
    if asked:
        instead = ", ".join(
            f"{_LIBPQ_ENVIRONMENT.get(name.upper(), 'an ssl_context= in code')} instead of {name}"
            for name in asked
        )
        raise ValueError(
            f"DB_TLS (tls): is {'not set' if mode is None else mode}, but the environment "
            f"has {', '.join(asked)}, which fastapi-asyncdb does not read: it would connect "
            f"without TLS; set {instead} (docs/tls.md)"
        )


def _load(
    label: str, load: Callable[[], ssl.SSLContext | None], unreadable: str = "not PEM"
) -> ssl.SSLContext:
    try:
        return cast(ssl.SSLContext, load())
    except ssl.SSLError as error:
        # OpenSSL's reason when it has one (KEY_VALUES_MISMATCH...); "PEM lib" says nothing.
        reason = str(error.reason) if error.reason else unreadable
        raise ValueError(f"{label}: cannot be loaded ({reason})") from None
    except OSError as error:
        raise ValueError(f"{label}: cannot be read ({error.strerror})") from None


# --- the URL's own TLS parameters ------------------------------------------------


def _url_tls_keys(url: URL) -> list[str]:
    return [key for key in url.query if key.lower().startswith(("ssl", "tls"))]


def refuse_unread_url_tls(url: URL) -> None:
    """Raise ``ValueError`` if ``url`` carries TLS parameters this module has no names
    for: a backend added without them would hand them unread to a driver that may fall
    back to plaintext. Called once the backend is chosen, so that a URL no backend
    serves is refused for that first, with the spelling to use."""
    keys = _url_tls_keys(url)
    backend = url.get_backend_name()
    if keys and backend not in _URL_FIELDS:
        raise ValueError(
            f"the TLS parameter {keys[0]} is not one fastapi-asyncdb reads in a {backend} "
            "URL; use DB_TLS and DB_TLS_* (docs/tls.md), or build an ssl_context= in code"
        )


def _request_from_url(url: URL) -> TlsRequest | None:
    keys = _url_tls_keys(url)
    backend = url.get_backend_name()
    if not keys or (backend not in _URL_FIELDS and backend != "sqlite"):
        return None  # a backend without names: refuse_unread_url_tls, once it is known
    if backend == "sqlite":
        raise ValueError(
            f"DATABASE_URL (url): {keys[0]}: SQLite has no network connection to encrypt; remove it"
        )
    fields = _URL_FIELDS[backend]
    values: dict[str, str] = {}
    labels = dict(_SETTING_LABELS)
    for key in keys:
        name = fields.get(key.lower())
        if name is None:
            raise ValueError(
                f"DATABASE_URL (url): the TLS parameter {key} is not supported here; "
                "use DB_TLS and DB_TLS_* (docs/tls.md), or build an ssl_context= in code"
            )
        value = url.query[key]
        if not isinstance(value, str) or name in values:
            raise ValueError(f"DATABASE_URL (url): TLS is asked for twice ({', '.join(keys)})")
        values[name] = value
        labels[name] = f"DATABASE_URL's {key}"
    mode = _url_mode(values, backend, labels)
    return TlsRequest(
        mode=mode,
        ca_file=Path(values["ca_file"]) if "ca_file" in values else None,
        cert_file=Path(values["cert_file"]) if "cert_file" in values else None,
        key_file=Path(values["key_file"]) if "key_file" in values else None,
        key_password=SecretStr(values["key_password"]) if "key_password" in values else None,
        labels=labels,
    )


def _url_mode(values: Mapping[str, str], backend: str, labels: dict[str, str]) -> TlsMode:
    given = values.get("mode")
    if given is not None:
        mode = given.lower()
        if backend != "postgresql":
            mode = _MYSQL_MODES.get(mode.replace("-", "_"), mode)
        if "check_hostname" in values:
            raise ValueError(
                f"{labels['check_hostname']}: {labels['mode']} already says what to verify"
            )
    elif "ca_file" in values and backend != "postgresql":
        check = values.get("check_hostname", "true").lower()
        mode = "verify-ca" if check in ("false", "0", "no", "off") else "verify-full"
        labels["mode"] = labels["ca_file"]
    else:
        asked = ", ".join(labels[name] for name in values)
        raise ValueError(
            f"{asked}: without a TLS mode, TLS would verify nothing or fall back to plaintext; "
            + (
                "add sslmode=verify-full (or DB_TLS)"
                if backend == "postgresql"
                else "add ssl_ca= (or DB_TLS=verify-full for the system's trust store)"
            )
        )
    if mode in _FALLBACK_MODES:
        raise ValueError(
            f"{labels['mode']}: {given} falls back to plaintext without a word, and "
            "verifies nothing; use verify-full (or require, knowingly)"
        )
    if mode not in TLS_MODES:
        raise ValueError(
            f"{labels['mode']}: {given} is not a TLS mode; use one of {', '.join(TLS_MODES)}"
        )
    return mode
