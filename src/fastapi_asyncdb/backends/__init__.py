"""One module per backend; this package finds them and picks the one a URL names.

Every module here (but ``base``) defines one ``Backend`` subclass. Adding a backend is
adding a module: the registry discovers it by its ``dialects`` and its ``driver``, so a
second driver of a database (``postgresql+psycopg://`` beside ``postgresql+asyncpg://``)
is a module of its own too, a subclass of the first if it shares most of it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from functools import cache
from typing import TYPE_CHECKING

from sqlalchemy.engine import Dialect

from ..errors import ConfigurationError
from ..managed import check_connect_options
from ..tls import refuse_unread_url_tls
from .base import Backend, ConnectionLimits, ServerFacts

if TYPE_CHECKING:
    from ..settings import DatabaseSettings

__all__ = ["Backend", "ConnectionLimits", "ServerFacts", "backend_class_for_dialect", "resolve"]


@cache
def _backend_classes() -> dict[tuple[str, str], type[Backend]]:
    """Every backend, by the SQLAlchemy backend names it serves and its driver."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    classes: dict[tuple[str, str], type[Backend]] = {}
    for cls in _subclasses(Backend):
        # A class is a backend when it declares what it serves: a subclass that only
        # changes behaviour would otherwise claim its parent's URLs.
        if not {"dialects", "driver"} & vars(cls).keys():
            continue
        for name in cls.dialects:
            known = classes.setdefault((name, cls.driver), cls)
            if known is not cls:
                raise TypeError(
                    f"{_qualified(known)} and {_qualified(cls)} both serve "
                    f"{name}+{cls.driver}://; one backend per database and driver"
                )
    return classes


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _subclasses(cls: type[Backend]) -> list[type[Backend]]:
    found: list[type[Backend]] = []
    for subclass in cls.__subclasses__():
        found += [subclass, *_subclasses(subclass)]
    return found


def resolve(settings: DatabaseSettings) -> Backend:
    """The backend for the settings' URL; ``ConfigurationError`` saying what to change."""
    try:
        backend = _resolve(settings)
    except ValueError as error:
        raise ConfigurationError(
            f"Invalid database settings:\n  DATABASE_URL (url): {error}"
        ) from None
    check_connect_options(settings, backend)
    return backend


def _resolve(settings: DatabaseSettings) -> Backend:
    url = settings.sqlalchemy_url
    name = url.get_backend_name()
    classes = _backend_classes()
    by_driver = {driver: cls for (dialect, driver), cls in classes.items() if dialect == name}
    if not by_driver:
        raise ValueError(_unsupported_backend(name, classes))
    # Every backend of one name agrees on SQLAlchemy's default driver for it.
    default = next(iter(by_driver.values())).sync_default_driver
    given = url.drivername.partition("+")[2] or default
    cls = by_driver.get(given)
    if cls is None:
        choices = " or ".join(f"{name}+{driver}://" for driver in sorted(by_driver))
        if given == default:
            why = "which is not asyncio-compatible"
        elif given.lower() in by_driver:
            why = "written in capitals, which SQLAlchemy does not read"
        else:
            why = "which fastapi-asyncdb does not support"
        raise ValueError(f"uses the driver {given!r}, {why}; write {choices} instead")
    if importlib.util.find_spec(cls.driver) is None:
        raise ValueError(
            f"needs the driver package {cls.driver!r}, which is not installed; "
            f"install it with: pip install 'fastapi-asyncdb[{cls.extra}]'"
        )
    backend = cls(settings)
    backend.check_url(url)
    refuse_unread_url_tls(url)
    return backend


# Names SQLAlchemy once took, or that users write, for a backend it names otherwise.
_BACKEND_ALIASES = {"postgres": "postgresql", "pgsql": "postgresql", "mariadb": "mysql"}


def _unsupported_backend(name: str, classes: dict[tuple[str, str], type[Backend]]) -> str:
    served = {dialect: cls for (dialect, _driver), cls in classes.items()}
    meant = _BACKEND_ALIASES.get(name.lower(), name.lower())
    if meant in served and meant != name:
        return f"names the backend {name!r}; write {meant}+{served[meant].driver}:// instead"
    examples = ", ".join(sorted({f"{c.dialects[0]}+{c.driver}://" for c in classes.values()}))
    return f"backend {name!r} is not supported; use one of {examples}"


def backend_class_for_dialect(dialect: Dialect) -> type[Backend] | None:
    """The backend of a SQLAlchemy dialect, if it is one of ours with its driver."""
    return _backend_classes().get((dialect.name, dialect.driver))
