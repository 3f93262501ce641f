"""One module per backend; this package finds them and picks the one a URL names.

Every module here (but ``base``) defines one ``Backend`` subclass. Adding a backend is
adding a module: the registry discovers it by its ``dialects``.
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
from .base import Backend, ConnectionLimits, ServerFacts

if TYPE_CHECKING:
    from ..settings import DatabaseSettings

__all__ = ["Backend", "ConnectionLimits", "ServerFacts", "backend_class_for_dialect", "resolve"]


@cache
def _backend_classes() -> dict[str, type[Backend]]:
    """Every backend, by the SQLAlchemy backend names it serves."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    return {name: cls for cls in Backend.__subclasses__() for name in cls.dialects}


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
    classes = _backend_classes()
    cls = classes.get(url.get_backend_name())
    if cls is None:
        examples = ", ".join(sorted({f"{c.dialects[0]}+{c.driver}://" for c in classes.values()}))
        raise ValueError(
            f"backend {url.get_backend_name()!r} is not supported; use one of {examples}"
        )
    given = url.drivername.partition("+")[2] or cls.sync_default_driver
    if given != cls.driver:
        raise ValueError(
            f"uses the driver {given!r}, which is not asyncio-compatible here; "
            f"write {url.get_backend_name()}+{cls.driver}:// instead"
        )
    if importlib.util.find_spec(cls.driver) is None:
        raise ValueError(
            f"needs the driver package {cls.driver!r}, which is not installed; "
            f"install it with: pip install 'fastapi-asyncdb[{cls.extra}]'"
        )
    backend = cls(settings)
    backend.check_url(url)
    return backend


def backend_class_for_dialect(dialect: Dialect) -> type[Backend] | None:
    """The backend of a SQLAlchemy dialect, if it is one of ours with its driver."""
    cls = _backend_classes().get(dialect.name)
    return cls if cls is not None and cls.driver == dialect.driver else None
